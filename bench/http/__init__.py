"""bench/http: FastRDB's example app against its peers over HTTP (``python -m bench.http``)."""
