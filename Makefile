# The README's two commands. Both install what is missing first (scripts/bootstrap.sh).
.PHONY: demo test setup bench-link bench-import bench-incidents

demo:
	@scripts/bootstrap.sh demo
	.venv/bin/gisgrid demo

test:
	@scripts/bootstrap.sh test
	.venv/bin/pytest

setup:
	@scripts/bootstrap.sh test

bench-link:
	@scripts/bootstrap.sh demo
	.venv/bin/python bench/link.py

bench-import:
	@scripts/bootstrap.sh bench
	.venv/bin/python bench/import.py

bench-incidents:
	@scripts/bootstrap.sh bench
	.venv/bin/python bench/incidents.py
