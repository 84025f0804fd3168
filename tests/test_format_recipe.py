"""docs/format.md section 11, "Opening one value by hand", run as it is written.

The doc's script is saved as open_value.py and run with this interpreter. Step 1's
commands copy a value that a KmsKeyring wrote (through the moto KMS server) out of
each database with that database's own client. Step 2's KMS request is made with
boto3, with exactly the parameters the doc's ``aws kms decrypt`` line sends, and,
where the AWS CLI is installed, by that line itself.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from kms_server import (  # noqa: F401 - pytest fixtures
    REGION,
    Key,
    aws_env_fixture,
    kms_endpoint_fixture,
    make_key_fixture,
)

from sqla_envelope import EncryptedType, Encryptor, KmsKeyring, unpack_envelope
from sqla_envelope.keyrings._kms_blob import parse_blob

pytestmark = pytest.mark.usefixtures("aws_env")

ROOT = Path(__file__).resolve().parents[1]
SECTION = (
    (ROOT / "docs" / "format.md")
    .read_text(encoding="utf-8")
    .split("## 11. Opening one value by hand", 1)[1]
)
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```$", SECTION, re.MULTILINE | re.DOTALL)
SCRIPT, LOCAL_UNWRAP = PYTHON_BLOCKS[0], PYTHON_BLOCKS[1]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "envelope_v2.json").read_text("utf-8"))[
    "vectors"
]
V1_VECTORS = json.loads((ROOT / "tests" / "vectors" / "envelope_v1.json").read_text("utf-8"))[
    "vectors"
]
CONTEXT = {"table": "users", "column": "ssn"}
SSN = "123-45-6789"


def _commands(marker: str) -> list[tuple[str, str]]:
    """(the comment above it, the command) for each command of a shell block of the recipe."""
    block = SECTION.split(f"<!-- {marker} -->\n```sh\n", 1)[1].split("```", 1)[0]
    commands, comment = [], ""
    for line in block.replace("\\\n", "").splitlines():
        if line.startswith("#"):
            comment = line[1:].strip()
        elif line.strip():
            commands.append((comment, " ".join(line.split())))
    return commands


def _script() -> dict[str, Any]:
    """The names open_value.py defines, with the LocalKeyring addition (not run as __main__)."""
    namespace: dict[str, Any] = {"__name__": "open_value"}
    exec(compile(SCRIPT + LOCAL_UNWRAP, "open_value.py", "exec"), namespace)
    return namespace


def _shell(command: str, cwd: Path, env: dict[str, str] | None = None) -> bytes:
    """Run one command of the doc with bash, ``python3`` being this interpreter."""
    path = os.pathsep.join((str(Path(sys.executable).parent), os.environ["PATH"]))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        env={**os.environ, "PATH": path, **(env or {})},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "open_value.py").write_text(SCRIPT, encoding="utf-8")
    return tmp_path


@pytest.fixture
def kms_keyring(make_key: Callable[..., Key], kms_endpoint: str) -> KmsKeyring:
    return KmsKeyring(make_key().arn, region_name=REGION, endpoint_url=kms_endpoint)


def _copy_value_out(engine: sa.Engine, workdir: Path) -> None:
    """Step 1: the doc's command for this database writes value.bin."""
    url = engine.url
    backend = url.get_backend_name()
    wanted = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(backend, "MariaDB")
    command = next(cmd for comment, cmd in _commands("recipe-value") if comment.startswith(wanted))
    env = {}
    if backend == "sqlite":
        command = command.replace("app.db", shlex.quote(str(url.database)))
    elif backend == "postgresql":
        env["DATABASE_URL"] = url.set(drivername="postgresql").render_as_string(False)
    else:  # the doc names the database "app"; here it needs the server's address too
        login = f"-h {url.host} -P {url.port or 3306} -u {url.username}"
        login += f" -p{shlex.quote(url.password)}" if url.password else ""
        assert " app |" in command
        command = command.replace(" app |", f" {login} {url.database} |")
    _shell(command, workdir, env)


def _decrypt_as_the_cli_does(command: str, workdir: Path, key_arn: str, endpoint: str) -> bytes:
    """The doc's ``aws kms decrypt`` line, sent with boto3: the same request parameters."""
    words = shlex.split(command.split("|", 1)[0].replace('"$KEY_ARN"', key_arn))
    assert words[:3] == ["aws", "kms", "decrypt"]
    options = dict(zip(words[3::2], words[4::2], strict=True))
    assert options.keys() == {
        "--ciphertext-blob",
        "--key-id",
        "--encryption-context",
        "--query",
        "--output",
    }
    assert (options["--query"], options["--output"]) == ("Plaintext", "text")
    assert command.endswith("| base64 -d > data_key")
    blob_file = options["--ciphertext-blob"].removeprefix("fileb://")
    client = boto3.client("kms", region_name=REGION, endpoint_url=endpoint)
    response = client.decrypt(
        CiphertextBlob=(workdir / blob_file).read_bytes(),
        KeyId=options["--key-id"],
        EncryptionContext=dict(
            pair.split("=", 1) for pair in options["--encryption-context"].split(",")
        ),
    )
    return response["Plaintext"]  # type: ignore[no-any-return]


def test_recipe_opens_a_kms_value_copied_out_of_the_database(
    engine: sa.Engine,
    metadata: sa.MetaData,
    workdir: Path,
    kms_keyring: KmsKeyring,
    kms_endpoint: str,
) -> None:
    users = sa.Table(
        "users",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ssn", EncryptedType(sa.String(11), Encryptor(kms_keyring))),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(users.insert(), [{"id": 41, "ssn": "987-65-4321"}, {"id": 42, "ssn": SSN}])
        stored = conn.execute(
            sa.text("SELECT ssn FROM users WHERE id = 42").columns(sa.column("ssn", sa.LargeBinary))
        ).scalar_one()

    _copy_value_out(engine, workdir)
    assert (workdir / "value.bin").read_bytes() == stored

    get_arn, aws_line, open_line = (cmd for _, cmd in _commands("recipe-kms"))
    assert get_arn.startswith("KEY_ARN=$(") and get_arn.endswith(")")
    key_arn = _shell(get_arn[len("KEY_ARN=$(") : -1], workdir).decode().strip()
    (copy,) = unpack_envelope(stored).wrapped_keys
    assert key_arn == copy.key_ref == kms_keyring.key_id
    assert (workdir / "blob.bin").read_bytes() == parse_blob(copy.blob).kms_ciphertext

    data_key = _decrypt_as_the_cli_does(aws_line, workdir, key_arn, kms_endpoint)
    (workdir / "data_key").write_bytes(data_key)
    assert _shell(open_line, workdir) == SSN.encode()


@pytest.mark.skipif(shutil.which("aws") is None, reason="the AWS CLI is not installed")
def test_recipe_runs_verbatim_with_the_aws_cli(
    workdir: Path, kms_keyring: KmsKeyring, kms_endpoint: str
) -> None:
    """Step 2 as one shell script, the real ``aws`` sent to the KMS test server."""
    value = Encryptor(kms_keyring).encrypt(SSN.encode(), CONTEXT)
    (workdir / "value.bin").write_bytes(value)
    block = SECTION.split("<!-- recipe-kms -->\n```sh\n", 1)[1].split("```", 1)[0]
    assert _shell(block, workdir, {"AWS_ENDPOINT_URL": kms_endpoint}) == SSN.encode()
    assert len((workdir / "data_key").read_bytes()) == 32


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_script_opens_every_v2_vector(vector: dict[str, Any]) -> None:
    script = _script()
    value, data_key = bytes.fromhex(vector["envelope"]), bytes.fromhex(vector["data_key"])
    copies, header_size = script["parse"](value)
    assert copies == [(k["key_id"], bytes.fromhex(k["wrapped_key"])) for k in vector["keys"]]
    assert value[:header_size].hex() == vector["header"]
    assert script["canonical"](vector["context"]).hex() == vector["canonical_context"]
    assert script["open_value"](value, data_key, vector["context"]).hex() == vector["plaintext"]


def test_script_refuses_another_data_key_and_v1() -> None:
    script = _script()
    vector = next(v for v in VECTORS if v["name"] == "two-wrapped-keys")
    value = bytes.fromhex(vector["envelope"])
    with pytest.raises(ValueError, match="key commitment"):
        script["open_value"](value, bytes(32), vector["context"])
    old = bytes.fromhex(V1_VECTORS[0]["envelope"])
    with pytest.raises(ValueError, match="not a format v2 value"):
        script["open_value"](old, bytes.fromhex(V1_VECTORS[0]["data_key"]), CONTEXT)


def test_script_kms_blob_command_refuses_a_local_copy(workdir: Path) -> None:
    vector = next(v for v in VECTORS if v["name"] == "short-ascii")
    (workdir / "value.bin").write_bytes(bytes.fromhex(vector["envelope"]))
    result = subprocess.run(
        [sys.executable, "open_value.py", "kms-blob", "value.bin"],
        cwd=workdir,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 1
    assert b"not a KmsKeyring direct-mode copy" in result.stderr
    assert not (workdir / "blob.bin").exists()


@pytest.mark.parametrize(
    "vector",
    [v for v in VECTORS if "master_key" in v["keys"][0]],
    ids=lambda v: v["name"],
)
def test_local_variant_unwraps_from_a_key_file(vector: dict[str, Any], tmp_path: Path) -> None:
    """local_data_key reads a key file as LocalKeyring.to_file writes it, any copy's key."""
    script = _script()
    value = bytes.fromhex(vector["envelope"])
    for key in vector["keys"]:
        key_file = tmp_path / f"{key['key_id']}.keys.json"
        master_key = base64.b64encode(bytes.fromhex(key["master_key"])).decode()
        key_file.write_text(json.dumps({"keys": {key["key_id"]: master_key}}))
        data_key = script["local_data_key"](str(key_file), value, vector["context"])
        assert data_key.hex() == vector["data_key"]
        plaintext = script["open_value"](value, data_key, vector["context"])
        assert plaintext.hex() == vector["plaintext"]


def test_bounded_reuse_copy_opens_as_the_doc_says(
    make_key: Callable[..., Key], kms_endpoint: str
) -> None:
    """Decrypt the wrapping key's blob with KMS, then AES-SIV under it as under a master key."""
    key = make_key()
    keyring = KmsKeyring(
        key.arn, region_name=REGION, endpoint_url=kms_endpoint, mode="bounded_reuse"
    )
    value = Encryptor(keyring).encrypt(SSN.encode(), CONTEXT)
    script = _script()
    ((key_arn, wrapped),) = script["parse"](value)[0]
    assert wrapped[0] == 2  # bounded reuse: 02 | u16 n | KMS blob (n bytes) | 48-byte wrap
    end = 3 + int.from_bytes(wrapped[1:3], "big")
    client = boto3.client("kms", region_name=REGION, endpoint_url=kms_endpoint)
    wrapping_key = client.decrypt(
        CiphertextBlob=wrapped[3:end], KeyId=key_arn, EncryptionContext=CONTEXT
    )["Plaintext"]
    siv_key = HKDF(hashes.SHA256(), 64, None, b"sqla-envelope/local-wrap/v1").derive(wrapping_key)
    data_key = AESSIV(siv_key).decrypt(wrapped[end:], [script["canonical"](CONTEXT)])
    assert script["open_value"](value, data_key, CONTEXT) == SSN.encode()
