"""No credentials in the repository: every file git tracks (or would add: untracked files that
are not ignored) is scanned for AWS keys, secrets with values, private keys and passwords in
config files; .dvc/config and dvc.lock must hold no S3 credentials, and .dvc/config.local (where
`make remote ... CREDENTIALS=local` puts them) must be git-ignored.

The scanner itself is tested on temporary files holding fake credentials that are assembled at
run time, so this repository never contains one. Findings name file, line and pattern only,
never the matched text.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_VALUE = r"""["']?([A-Za-z0-9/+=]{16,})"""  # a key-like value, not a $VAR, {name} or "x"
_DASHES = "-" * 5  # the header is assembled so that this file does not match it
PATTERNS_ANY_FILE = {
    "aws-access-key-id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "secret-access-key-with-value": re.compile(r"(?i)secret_access_key[\"']?\s*[:=]\s*" + _VALUE),
    "private-key": re.compile(_DASHES + r"BEGIN [A-Z0-9 ]*PRIVATE KEY" + _DASHES),
    "github-token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
}
# In code `aws_secret_access_key=` is a keyword argument; in a config file it is a leak.
PATTERNS_CONFIG_FILES = {
    "aws-secret-access-key": re.compile(r"(?i)aws_secret_access_key\s*="),
    "password": re.compile(r"(?i)password\s*[:=]\s*(?![\"']?\$\{)\S+"),
}
CONFIG_SUFFIXES = {".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf", ".env", ".json", ".properties",
                   ".config", ".local"}
CONFIG_NAMES = {"config", "credentials", ".env", ".netrc", ".pypirc", ".npmrc", "dvc.lock"}
MAX_BYTES = 5 * 2**20


def is_config_like(path: Path) -> bool:
    return path.suffix.lower() in CONFIG_SUFFIXES or path.name.lower() in CONFIG_NAMES


def scan_file(path: Path, rel: str | None = None) -> list[tuple[str, int, str]]:
    """(file, line, pattern name) for every credential-like match in `path`."""
    rel = rel or str(path)
    try:
        data = path.read_bytes()[:MAX_BYTES]
    except (FileNotFoundError, IsADirectoryError):
        return []
    if b"\0" in data[:8192]:  # binary
        return []
    patterns = dict(PATTERNS_ANY_FILE)
    if is_config_like(path):
        patterns.update(PATTERNS_CONFIG_FILES)
    found = []
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        for name, rx in patterns.items():
            if rx.search(line):
                found.append((rel, lineno, name))
    return found


def repo_files(root: Path = REPO) -> list[str]:
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    return sorted({f for f in out.decode().split("\0") if f})


def scan_repo(root: Path = REPO) -> list[tuple[str, int, str]]:
    return [hit for rel in repo_files(root) for hit in scan_file(root / rel, rel)]


def _fmt(findings) -> str:
    return "\n".join(f"  {f}:{n}: {name}" for f, n, name in findings)


# --------------------------------------------------------------------------------------------
# the scanner can fail


def _fake_key_id() -> str:
    return "AKIA" + "".join("QWERTYUIOPASDFGH"[i] for i in range(16))


def _fake_secret() -> str:
    return "wJalr" + "XUtnFEMI" * 4 + "K7MDEN"  # 43 key-like characters


def test_scanner_flags_fake_credentials(tmp_path):
    cases = {
        "notes.md": (f"the key is {_fake_key_id()} do not share\n", "aws-access-key-id"),
        "deploy.py": (f'secret_access_key = "{_fake_secret()}"\n', "secret-access-key-with-value"),
        "id_rsa.txt": (_DASHES + "BEGIN RSA PRIVATE KEY" + _DASHES + "\nMIIEow\n", "private-key"),
        "credentials": ("[default]\naws_secret_access_key = x\n", "aws-secret-access-key"),
        "db.yaml": ("db:\n  password: hunter2\n", "password"),
        "config": ("['remote \"s\"']\n    secret_access_key = " + _fake_secret() + "\n",
                   "secret-access-key-with-value"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        names = {n for _, _, n in scan_file(path)}
        assert expected in names, (name, names)
    # the line number points at the secret
    assert scan_file(tmp_path / "db.yaml") == [(str(tmp_path / "db.yaml"), 2, "password")]


def test_scanner_ignores_references_and_code(tmp_path):
    clean = {
        "run.sh": 'dvc remote modify --local storage secret_access_key "$AWS_SECRET_ACCESS_KEY"\n',
        "client.py": "boto3.client('s3', aws_secret_access_key=secret)\npassword = getpass()\n",
        "ci.yaml": "password: ${{ secrets.DB_PASSWORD }}\n",
        "blob.bin": None,
    }
    for name, text in clean.items():
        path = tmp_path / name
        if text is None:
            path.write_bytes(b"\0\1" + _fake_key_id().encode())
        else:
            path.write_text(text)
        assert scan_file(path) == [], name


def test_repo_scan_finds_a_committed_key(tmp_path):
    """The repository-level scan (git ls-files + scanner) fails on a repo holding a fake key,
    also before the file is added; ignored files are not scanned."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("scratch/\n")
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "settings.toml").write_text(f'key = "{_fake_key_id()}"\n')
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "db.yaml").write_text("password: hunter2\n")
    assert scan_repo(tmp_path) == [("settings.toml", 1, "aws-access-key-id")]
    subprocess.run(["git", "-C", str(tmp_path), "add", "settings.toml"], check=True)
    assert scan_repo(tmp_path) == [("settings.toml", 1, "aws-access-key-id")]


# --------------------------------------------------------------------------------------------
# the repository


def test_repository_files_contain_no_credentials():
    assert {"dvc.yaml", "params.yaml"} <= set(repo_files())
    findings = scan_repo()
    assert not findings, "credential-like text in repository files (file:line: pattern):\n" + _fmt(findings)


@pytest.mark.parametrize("rel", [".dvc/config", "dvc.lock"])
def test_dvc_config_and_lock_hold_no_s3_credentials(rel):
    path = REPO / rel
    if not path.exists():
        pytest.skip(f"{rel} does not exist")
    text = path.read_text().lower()
    for word in ("access_key_id", "secret_access_key", "session_token", "password"):
        assert word not in text, f"{rel} contains {word}: keep credentials in the environment or .dvc/config.local"
    assert not PATTERNS_ANY_FILE["aws-access-key-id"].search(path.read_text())


def test_dvc_config_local_is_ignored_and_untracked():
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "--", ".dvc/config.local"],
                             capture_output=True, text=True, check=True).stdout
    assert tracked == "", ".dvc/config.local is tracked by git: `git rm --cached .dvc/config.local`"
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", ".dvc/config.local"])
    assert ignored.returncode == 0, ".dvc/config.local is not git-ignored (DVC's .dvc/.gitignore lists it)"
