"""The credential store against credstash: ``get_all`` of N secrets through KMS, cold and warm.

One run, both sides behind the same KMS: ``bench/fake_kms.py`` answers every KMS
request inside the client after ``--latency`` (5 ms), so botocore's own work is
spent and AWS's is not. credstash 1.17.1's ``getAllSecrets`` reads its table from
moto's DynamoDB (a server in this process, over HTTP, as credstash talks to
AWS); the store reads a SQLite file. N (1,000) secrets are written by each.

* cold: the first ``get_all`` (our key cache empty: one Decrypt per secret);
* warm: a second ``get_all`` within the cache TTL (no KMS call at all); credstash
  has no cache, so its second call costs as its first.

Reported: seconds best and median of R repeats (3), secrets per second, KMS calls,
and the ratios against credstash. Issue 16's bars: cold at least 2x credstash's
rate; warm at least 50x with no KMS call.

Run::

    .venv/bin/python bench/bench_secrets.py [--secrets 1000] [--latency 0.005] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import credstash
from fake_kms import FakeKms, fake_aws_environment
from moto.server import ThreadedMotoServer

from sqla_envelope import Encryptor, KmsKeyring, SecretStore

REGION = "us-east-1"
KEY = "alias/credstash"


def credstash_table(endpoint: str, secrets: int, session: Any) -> str:
    table = f"credential-store-{uuid.uuid4().hex[:8]}"
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
    client.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "name", "KeyType": "HASH"},
            {"AttributeName": "version", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "name", "AttributeType": "S"},
            {"AttributeName": "version", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    kms = session.client("kms", region_name=REGION)
    dynamodb = boto3.resource("dynamodb", region_name=REGION, endpoint_url=endpoint)
    for i in range(secrets):
        credstash.putSecret(
            f"app.secret.{i:05d}", f"value-{i}", version=credstash.paddedInt(1),
            kms_key=KEY, table=table, kms=kms, dynamodb=dynamodb,
        )  # fmt: skip
    return table


def timed(call: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    fake_aws_environment(REGION)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fake = FakeKms(latency=args.latency, region=REGION)
    session = fake.attach(boto3.session.Session())
    results: dict[str, list[float]] = {"credstash": [], "cold": [], "warm": []}
    kms_calls: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        table = credstash_table(endpoint, args.secrets, session)
        keyring = KmsKeyring(KEY, session=session, region_name=REGION)
        store = SecretStore(sa.create_engine(f"sqlite:///{folder}/s.db"), Encryptor(keyring))
        store.create_table()
        for i in range(args.secrets):
            store.put(f"app.secret.{i:05d}", f"value-{i}")
        credstash_session = fake.attach(boto3.session.Session())
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint  # credstash makes its own resource
        for _ in range(args.repeat):
            before = fake.calls().get("Decrypt", 0)
            seconds, theirs = timed(
                lambda: credstash.getAllSecrets(
                    table=table, region=REGION, session=credstash_session
                )
            )
            kms_calls["credstash"] = fake.calls().get("Decrypt", 0) - before
            results["credstash"].append(seconds)
            store.encryptor.clear_cache()
            before = fake.calls().get("Decrypt", 0)
            seconds, ours = timed(store.get_all)
            kms_calls["cold"] = fake.calls().get("Decrypt", 0) - before
            results["cold"].append(seconds)
            before = fake.calls().get("Decrypt", 0)
            seconds, again = timed(store.get_all)
            kms_calls["warm"] = fake.calls().get("Decrypt", 0) - before
            results["warm"].append(seconds)
            assert dict(ours) == dict(again) == theirs, "the two stores disagree"
        keyring.close()
    server.stop()
    n = args.secrets
    print(f"{n} secrets, KMS answered in the client after {args.latency * 1000:.1f} ms, "
          f"{args.repeat} repeats")  # fmt: skip
    for name, label in (
        ("credstash", "credstash.getAllSecrets"),
        ("cold", "SecretStore.get_all, cold"),
        ("warm", "SecretStore.get_all, warm"),
    ):
        best, median = min(results[name]), statistics.median(results[name])
        print(f"  {label:28} best {best:7.3f} s  median {median:7.3f} s  "
              f"{n / best:9,.0f} secrets/s  KMS Decrypt calls {kms_calls[name]}")  # fmt: skip
    for name, bar in (("cold", 2.0), ("warm", 50.0)):
        best = min(results["credstash"]) / min(results[name])
        median = statistics.median(results["credstash"]) / statistics.median(results[name])
        verdict = "PASS" if best >= bar else "FAIL"
        print(f"  {name} rate / credstash's: {best:.1f}x (median {median:.1f}x), bar {bar:g}x: "
              f"{verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
