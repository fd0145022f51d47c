"""Storage: the tables, migrations, engines and every query; no other package holds SQL."""
