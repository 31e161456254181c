from django.contrib import admin

from .models import Customer, ImportedRow, Order


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("name", "email", "created_at")
    search_fields = ("name", "email")


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("number", "customer", "total", "coupon_code", "discount", "confirmation_sent_at")
    list_filter = ("warehouse_notified", "refunded")
    search_fields = ("number",)


@admin.register(ImportedRow)
class ImportedRowAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "quantity", "price", "chunk")
