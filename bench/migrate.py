"""Data migration throughput: 100,000 prediction records S3 -> PostgreSQL -> ClickHouse.

Runs the real migration code (``service.migrate``, which ``stagectl migrate-data`` runs too) against a
moto S3 server, a real PostgreSQL server and the ClickHouse engine (chdb), all local, and prints
records per second for each route.
Usage: ``python bench/migrate.py [--records N] [--json]`` (target: at least 5,000 records/s each).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service import migrate
from tests.delivery.test_migrate import make_records
from tests.service.helpers import CREDENTIALS, MotoS3
from tests.service.pg_server import PgServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-object", type=int, default=1000, help="records per JSON-lines object")
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()

    os.environ.update(CREDENTIALS)
    s3, pg = MotoS3(), PgServer(password=f"pw-{secrets.token_hex(12)}")
    try:
        s3.create_bucket("records")
        client = s3.client()
        records = make_records(options.records)
        for start in range(0, options.records, options.per_object):
            body = "".join(json.dumps(r) + "\n" for r in records[start:start + options.per_object])
            client.put_object(Bucket="records", Key=f"predictions/{start:09d}.jsonl", Body=body.encode())
        dsn = pg.create_database("bench")
        env = {"PG_PASSWORD": pg.password, "AWS_REGION": "ru-central1"}
        with tempfile.TemporaryDirectory() as tmp:
            ns = SimpleNamespace(s3_uri="s3://records/predictions/", s3_endpoint=s3.endpoint, pg_dsn=dsn,
                                 clickhouse_dsn=f"chdb://{tmp}/ch")
            results = {}
            for route, (source_stage, target_stage) in {"s3_to_postgres": ("mvp", "partner"),
                                                        "postgres_to_clickhouse": ("partner", "prod")}.items():
                source, sink = migrate.build(source_stage, target_stage, ns, env)
                checkpoint = migrate.Checkpoint.load(Path(tmp) / f"{route}.json", f"{source_stage}->{target_stage}")
                started = time.perf_counter()
                report = migrate.run(source, sink, checkpoint, batch_size=options.batch)
                elapsed = time.perf_counter() - started
                assert report.verified and report.sink_after == options.records, report.render()
                results[f"{route}_records_per_s"] = round(options.records / elapsed)
                results[f"{route}_seconds"] = round(elapsed, 2)
        results["records"] = options.records
    finally:
        s3.stop()
        pg.destroy()
    if options.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
