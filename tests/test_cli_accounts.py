"""Accounts, tokens and the audit log through the real CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import gisgrid_env

GISGRID = str(Path(sys.executable).parent / "gisgrid")


def run(url, *args, stdin=None):
    return subprocess.run([GISGRID, *args], capture_output=True, text=True, timeout=120, input=stdin,
                          env=gisgrid_env(GISGRID_DATABASE_URL=url))


def test_user_lifecycle_and_audit(demo_url, app):
    r = run(demo_url, "user", "add", "wang.wu", "--role", "field", "--area", "420103001000",
            "--password-stdin", stdin="a-long-password\n")
    assert r.returncode == 0, r.stderr
    assert "wang.wu\tfield\tactive\t420103001000" in run(demo_url, "user", "list").stdout
    tok = run(demo_url, "user", "token", "create", "wang.wu", "--name", "phone", "--scope", "read", "--days", "7")
    assert tok.returncode == 0 and tok.stdout.startswith("ggt_")
    plain = tok.stdout.strip()
    c = app.test_client()
    assert c.get("/api/me", headers={"Authorization": f"Bearer {plain}"}).json["username"] == "wang.wu"
    listed = run(demo_url, "user", "token", "list", "wang.wu").stdout
    assert plain not in listed and plain[:8] in listed and "active" in listed
    token_id = listed.split("\t")[0]
    assert run(demo_url, "user", "disable", "wang.wu").returncode == 0
    assert c.get("/api/me", headers={"Authorization": f"Bearer {plain}"}).status_code == 401
    assert run(demo_url, "user", "enable", "wang.wu").returncode == 0
    assert run(demo_url, "user", "token", "revoke", token_id).returncode == 0
    assert c.get("/api/me", headers={"Authorization": f"Bearer {plain}"}).status_code == 401
    log = [json.loads(line) for line in run(demo_url, "audit", "--entity", "api_token", "--json").stdout.splitlines()]
    assert [e["action"] for e in log[:2]] == ["revoke", "create"]
    assert all(e["actor"].startswith("cli:") for e in log[:2])
    assert plain not in json.dumps(log)


def test_no_default_passwords_and_clear_errors(demo_url):
    r = run(demo_url, "user", "add", "nopass", "--role", "viewer", "--area", "420103000000", "--password-stdin", stdin="\n")
    assert r.returncode == 2 and "at least 10 characters" in r.stderr
    r = run(demo_url, "user", "add", "ghost", "--role", "viewer", "--area", "999999999999", "--password-stdin",
            stdin="a-long-password\n")
    assert r.returncode == 2 and "999999999999" in r.stderr
    r = run(demo_url, "user", "add", "admin", "--role", "admin", "--password-stdin", stdin="a-long-password\n")
    assert r.returncode == 2 and "exists" in r.stderr
    r = run(demo_url, "user", "add", "nobody", "--role", "viewer", "--password-stdin", stdin="a-long-password\n")
    assert r.returncode == 2 and "needs a jurisdiction" in r.stderr
    r = run(demo_url, "audit", "--since", "yesterday")
    assert r.returncode == 2 and "ISO date" in r.stderr
