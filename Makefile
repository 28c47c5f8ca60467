.PHONY: test lint bench docs study mutation

test:
	python -m pytest -q

lint:
	ruff check fimlab tests

bench:
	python -m benchmarks --quick

docs:
	$(MAKE) -C docs html

study:
	fimlab study

mutation:
	python scripts/mutation_check.py
