"""The Django project the benchmarks run in; settings pick the database and backend from the environment."""
