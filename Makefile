# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV       ?= .venv
PY         := $(VENV)/bin/python
RAGCLI     := $(VENV)/bin/ragcli
STAMP      := $(VENV)/.installed
export RAGCLI_HOME ?= $(CURDIR)/.ragcli
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install demo test fuzz bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77,<81"  # the wheel test builds offline, without isolation
	$(PY) -m pip install -q -c constraints.txt -e ".[test,minilm]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(RAGCLI) index build --corpus coliee --name coliee-sample --overwrite
	$(RAGCLI) index query coliee-sample "Can a minor cancel a contract made without a guardian's consent?" -k 5
	$(RAGCLI) data qrels --years R02,R03 --out $(RAGCLI_HOME)/sample.qrels --topics $(RAGCLI_HOME)/sample-topics.tsv
	$(RAGCLI) index query coliee-sample --queries $(RAGCLI_HOME)/sample-topics.tsv --output $(RAGCLI_HOME)/sample.run --hits 10
	$(RAGCLI) eval run $(RAGCLI_HOME)/sample.run --qrels $(RAGCLI_HOME)/sample.qrels --metrics "nDCG@10,R@10,AP"

test: install
	$(PY) -m pytest -q

fuzz: install  # the fuzz suite's long hypothesis profile (400 examples per property)
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -q tests/fuzz

bench: install
	$(PY) bench/index_bench.py

clean:
	rm -rf $(VENV) .ragcli .pytest_cache
