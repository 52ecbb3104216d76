"""Database: the embedded cluster, engine and sessions, migrations."""
