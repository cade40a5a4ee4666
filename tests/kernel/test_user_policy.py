"""The per-user policy file: defaults, validation errors naming the line, the mtime cache, and
how a child's device options are narrowed to its parent's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmos import params
from llmos.errors import PolicyError
from llmos.kernel.sched.policy import Account, Entity
from llmos.kernel.security.policy import (
    UserPolicy,
    key_line,
    narrow_options,
    policy_for,
    policy_path,
)


def test_no_file_means_the_defaults(tmp_path: Path) -> None:
    policy = policy_for(tmp_path, "alice")
    assert policy == UserPolicy()
    assert policy.quota.descendants == params.QUOTA_DESCENDANTS
    assert policy.budget.process_tokens == params.POLICY_PROCESS_TOKENS


def test_a_policy_is_reread_when_the_file_changes(tmp_path: Path) -> None:
    path = policy_path(tmp_path, "alice")
    path.parent.mkdir(parents=True)
    path.write_text("[quota]\nmemories = 5\n")
    assert policy_for(tmp_path, "alice").quota.memories == 5
    path.write_text("[quota]\nmemories = 7\n")
    os.utime(path, ns=(1, 1))
    assert policy_for(tmp_path, "alice").quota.memories == 7
    path.write_text("[quota]\nmemories = -1\n")
    with pytest.raises(PolicyError, match=r"line 2: quota\.memories"):
        policy_for(tmp_path, "alice")


def test_star_covers_default_on_devices_only() -> None:
    policy = UserPolicy(devices=["*", "github.*"])
    assert policy.allows_device("fs", default_on=True)
    assert not policy.allows_device("shell", default_on=False)
    assert UserPolicy(devices=["shell"]).allows_device("shell", default_on=False)
    assert not UserPolicy(devices=["calc"]).allows_device("fs", default_on=True)


def test_key_line_finds_keys_in_tables_and_lists() -> None:
    text = 'devices = ["a"]\n\n[quota]\n# c\nfs_bytes = 1\n[budget]\nuser_tokens = 2\n'
    assert key_line(text, ("devices", 0)) == 1
    assert key_line(text, ("quota", "fs_bytes")) == 5
    assert key_line(text, ("budget", "user_tokens")) == 7
    assert key_line(text, ("quota",)) == 3
    assert key_line(text, ("budget", "process_tokens")) == 6  # absent: its table's line
    assert key_line(text, ("nowhere",)) is None


def test_child_options_never_widen_the_parents() -> None:
    parent = {"paths": ["notes"], "write": False, "timeout_s": 5}
    child = {"paths": ["notes/a", "secret", "notes/../secret"], "write": True, "timeout_s": 50}
    assert narrow_options(child, parent) == {"paths": ["notes/a"], "write": False, "timeout_s": 5}
    assert narrow_options(None, parent) == parent
    assert narrow_options({"allow": ["rm", "ls"]}, {}) == {"allow": ["ls"]}  # the default list
    assert narrow_options({"grant": True}, None) == {"grant": True}


def test_a_childs_tokens_are_charged_up_the_tree() -> None:
    acct = Account(owner="a", budget=1000)
    top = Entity(budget=100, account=acct)
    mid = Entity(budget=100, parent=top, account=acct)
    leaf = Entity(budget=100, parent=mid, account=acct)
    assert leaf.charge(prompt=30) and mid.charge(prompt=30)
    assert (top.spent, mid.spent, leaf.spent, acct.tokens) == (60, 60, 30, 60)
    assert not leaf.charge(prompt=50)  # would pass the top's budget: not charged at all
    assert leaf.exhausted and top.spent == 60 and not top.over_budget
    assert not top.charge(generated=40)  # generated tokens count as they come
    assert mid.over_budget and top.spent == 100
