"""The log scan (tests/logscan.py) finds what it is there to find.

Each case runs a small test file in a pytest of its own, with the plugin, and
checks that a leak fails that test and that a clean test passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).parent

PREAMBLE = """
import base64, logging
from sqla_envelope import Encryptor, LocalKeyring, DecryptionError
from sqla_envelope.context import EncryptionContext

SECRET = b"national id 123-45-6789 of a patient"
log = logging.getLogger("sqla_envelope.test")

def sealed():
    keyring = LocalKeyring.generate()
    encryptor = Encryptor(keyring)
    context = EncryptionContext.of({"table": "t", "column": "c"})
    return keyring, encryptor, encryptor.seal(SECRET, context), context
"""


def run_scanned(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_case.py"
    test_file.write_text(PREAMBLE + textwrap.dedent(body))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("LOGSCAN_SHOW", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "logscan",
            "-p",
            "no:cacheprovider",
            str(test_file),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("leak", "where"),
    [
        ("log.debug('value %s', SECRET.decode())", "log sqla_envelope.test"),
        ("log.info('value %s', SECRET.hex())", "log sqla_envelope.test"),
        ("log.warning('value %s', base64.b64encode(SECRET).decode())", "log sqla_envelope.test"),
        ("log.error('value %r', SECRET)", "log sqla_envelope.test"),
        ("DecryptionError('bad value ' + SECRET.decode())", "error DecryptionError"),
        (
            "log.debug('key %s', keyring.unwrap_data_key(__import__('sqla_envelope').envelope"
            ".unpack(envelope).wrapped_keys, context).hex())",
            "log sqla_envelope.test",
        ),
    ],
    ids=["raw", "hex", "base64", "bytes-repr", "error-message", "data-key-hex"],
)
def test_a_plaintext_or_key_in_a_log_or_error_fails_the_test(
    tmp_path: Path, leak: str, where: str
) -> None:
    result = run_scanned(
        tmp_path,
        f"""
        def test_leaks():
            keyring, encryptor, envelope, context = sealed()
            {leak}
        """,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "a plaintext or key of this test appeared in" in result.stdout
    assert where in result.stdout
    # The report names where, never the secret itself (pytest's own "Captured log"
    # section of the child run may show it: that is the leak, shown to its author).
    report = next(line for line in result.stdout.splitlines() if "appeared in" in line)
    assert "123-45-6789" not in report


def test_a_test_that_shows_no_secret_passes(tmp_path: Path) -> None:
    result = run_scanned(
        tmp_path,
        """
        def test_clean():
            keyring, encryptor, envelope, context = sealed()
            log.debug("sealed %d bytes under %r", len(envelope), encryptor)
            assert encryptor.open(envelope, context) == SECRET
            try:
                encryptor.open(envelope[:-1] + bytes([envelope[-1] ^ 1]), context)
            except DecryptionError as exc:
                log.warning("refused: %s", exc)
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
