"""fasttasks: a production backend and worker for Django's tasks framework."""
