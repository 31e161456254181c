from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    number = models.CharField(max_length=20, unique=True)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    coupon_code = models.CharField(max_length=20, blank=True)
    discount = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    confirmation_sent_at = models.DateTimeField(null=True, blank=True)
    warehouse_notified = models.BooleanField(default=False)
    refunded = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.number


class ImportedRow(models.Model):
    """One line of a product CSV imported in chunks by ``import_csv_chunk``."""

    chunk = models.IntegerField(db_index=True)
    sku = models.CharField(max_length=20)
    name = models.CharField(max_length=100)
    quantity = models.IntegerField()
    price = models.DecimalField(max_digits=10, decimal_places=2)
