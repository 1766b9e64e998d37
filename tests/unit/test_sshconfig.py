"""The ~/.ssh/config resolver: patterns, first-value-wins, Include, Match, tokens, errors."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from fleet.config.sshconfig import SshConfig, SshConfigEntry, split_line
from fleet.errors import ConfigError


def resolve(
    text_or_path: str | Path, host_alias: str, *, ssh_dir: Path | None = None
) -> SshConfigEntry:
    """What the config (text, or the path of a file) says about `host_alias`: the tests'
    shorthand for SshConfig.parse/load(...).resolve(alias)."""
    if isinstance(text_or_path, Path):
        config = SshConfig.load(text_or_path, ssh_dir=ssh_dir)
    else:
        config = SshConfig.parse(text_or_path, ssh_dir=ssh_dir)
    return config.resolve(host_alias)


BASIC = """\
# a comment
Host alpha
    HostName alpha.example.org
    User alice
    Port 2201
    IdentityFile ~/.ssh/alpha

Host web-* !web-internal
    HostName %h.example.net
    User www

Host web-internal
    HostName 10.1.2.3

Host db? db-??-eu
    User postgres
    ProxyJump bastion.example.org

Host *
    User fallback
    Port 2200
    IdentityFile ~/.ssh/id_ed25519
"""


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        (
            "alpha",
            SshConfigEntry(
                "alpha.example.org", "alice", 2201, ("~/.ssh/alpha", "~/.ssh/id_ed25519")
            ),
        ),
        ("web-1", SshConfigEntry("web-1.example.net", "www", 2200, ("~/.ssh/id_ed25519",))),
        ("web-internal", SshConfigEntry("10.1.2.3", "fallback", 2200, ("~/.ssh/id_ed25519",))),
        (
            "db1",
            SshConfigEntry(None, "postgres", 2200, ("~/.ssh/id_ed25519",), "bastion.example.org"),
        ),
        (
            "db-01-eu",
            SshConfigEntry(None, "postgres", 2200, ("~/.ssh/id_ed25519",), "bastion.example.org"),
        ),
        ("db12", SshConfigEntry(None, "fallback", 2200, ("~/.ssh/id_ed25519",))),
        ("other", SshConfigEntry(None, "fallback", 2200, ("~/.ssh/id_ed25519",))),
    ],
)
def test_patterns_and_first_value_wins(alias: str, expected: SshConfigEntry) -> None:
    entry = resolve(BASIC, alias)
    assert entry == SshConfigEntry(**{**expected.__dict__, "source": "<ssh config>"})


def test_empty_config_says_nothing() -> None:
    assert resolve("", "alpha") == SshConfigEntry(source="<ssh config>")


def test_lines_before_any_host_apply_to_every_alias() -> None:
    entry = resolve("User early\nHost alpha\n  User late\n", "alpha")
    assert entry.user == "early"


def test_host_matching_is_case_insensitive() -> None:
    assert resolve("Host ALPHA\n  User a\n", "alpha").user == "a"
    assert resolve("Host alpha\n  User a\n", "Alpha").user == "a"


def test_negation_alone_never_matches() -> None:
    assert resolve("Host !beta\n  User a\n", "alpha").user is None


def test_negation_wins_over_a_positive_match() -> None:
    text = "Host * !alpha\n  User star\n"
    assert resolve(text, "alpha").user is None
    assert resolve(text, "beta").user == "star"


def test_glob_has_no_character_classes() -> None:
    # ssh patterns know * and ? only: [ab] is literal.
    assert resolve("Host [ab]\n  User x\n", "a").user is None
    assert resolve("Host [ab]\n  User x\n", "[ab]").user == "x"


@pytest.mark.parametrize(
    "line",
    [
        "User alice",
        "user alice",
        "USER alice",
        "User=alice",
        "User = alice",
        "  User\talice  ",
        'User "alice"',
        "User 'alice'",
        "User alice # trailing comment",
        "User=alice#not-a-comment-start",
    ],
)
def test_keyword_syntax(line: str) -> None:
    expected = "alice#not-a-comment-start" if "#not" in line else "alice"
    assert resolve(f"Host a\n{line}\n", "a").user == expected


def test_quoted_value_keeps_spaces() -> None:
    entry = resolve('Host a\n  IdentityFile "~/.ssh/my key"\n', "a")
    assert entry.identity_files == ("~/.ssh/my key",)


def test_split_line() -> None:
    assert split_line("  # comment") == []
    assert split_line("") == []
    assert split_line("Host a b  'c d' # x") == ["Host", "a", "b", "c d"]
    assert split_line("Host=a") == ["Host", "a"]
    with pytest.raises(ValueError, match="unbalanced quote"):
        split_line('User "alice')


def test_crlf_line_endings() -> None:
    assert resolve("Host a\r\n  User alice\r\n", "a").user == "alice"


def test_identity_files_accumulate_without_duplicates_or_none() -> None:
    text = """\
Host a
  IdentityFile ~/.ssh/one
  IdentityFile none
  IdentityFile ~/.ssh/two
Host *
  IdentityFile ~/.ssh/one
  IdentityFile ~/.ssh/three
"""
    assert resolve(text, "a").identity_files == ("~/.ssh/one", "~/.ssh/two", "~/.ssh/three")


def test_tokens() -> None:
    text = """\
Host a
  HostName %h.example.org
  IdentityFile %d/keys/%h-%n-%u-%%-%r
"""
    config = SshConfig.parse(text, home="/home/me")
    entry = config.resolve("a")
    assert entry.hostname == "a.example.org"
    user = getpass.getuser()
    # %r (and other tokens fleet does not know) are kept as written.
    assert entry.identity_files == (f"/home/me/keys/a.example.org-a-{user}-%-%r",)


def test_proxy_jump_none() -> None:
    assert resolve("Host a\n  ProxyJump none\nHost *\n  ProxyJump j\n", "a").proxy_jump is None
    assert resolve("Host a\n  ProxyJump u@j1:22,j2\n", "a").proxy_jump == "u@j1:22,j2"


def test_match_blocks_are_skipped() -> None:
    text = """\
Match host alpha exec "touch /tmp/fleet-should-not-run"
  User from-match
Host alpha
  Port 2222
Match all
  User from-match-all
"""
    entry = resolve(text, "alpha")
    assert entry.user == "from-match-all"
    assert entry.port == 2222
    assert not Path("/tmp/fleet-should-not-run").exists()


def test_host_after_match_resumes_matching() -> None:
    text = "Match user bob\n  User x\nHost alpha\n  User y\n"
    assert resolve(text, "alpha").user == "y"


# ---------------------------------------------------------------------------------------------
# Include


@pytest.fixture
def ssh_dir(tmp_path: Path) -> Path:
    d = tmp_path / ".ssh"
    (d / "config.d").mkdir(parents=True)
    (d / "config.d" / "20-web").write_text("Host web-*\n  User web-user\n")
    (d / "config.d" / "10-alpha").write_text("Host alpha\n  User alpha-user\n  Port 2001\n")
    (d / "extra").write_text("User included\nIdentityFile ~/.ssh/extra\n")
    return d


def test_include_relative_to_ssh_dir_with_glob(ssh_dir: Path) -> None:
    text = "Include config.d/*\nHost *\n  User star\n"
    assert resolve(text, "alpha", ssh_dir=ssh_dir).user == "alpha-user"
    assert resolve(text, "alpha", ssh_dir=ssh_dir).port == 2001
    assert resolve(text, "web-3", ssh_dir=ssh_dir).user == "web-user"
    assert resolve(text, "zeta", ssh_dir=ssh_dir).user == "star"


def test_include_absolute_path(ssh_dir: Path) -> None:
    text = f"Include {ssh_dir / 'extra'}\n"
    assert resolve(text, "x").user == "included"


def test_include_with_tilde_uses_the_given_home(ssh_dir: Path) -> None:
    config = SshConfig.parse("Include ~/.ssh/extra\n", home=str(ssh_dir.parent))
    assert config.resolve("x").user == "included"


def test_include_in_a_host_block_applies_only_to_that_host(ssh_dir: Path) -> None:
    text = "Host alpha\n  Include extra\nHost *\n  User star\n"
    assert resolve(text, "alpha", ssh_dir=ssh_dir).user == "included"
    assert resolve(text, "alpha", ssh_dir=ssh_dir).identity_files == ("~/.ssh/extra",)
    assert resolve(text, "beta", ssh_dir=ssh_dir).user == "star"
    assert resolve(text, "beta", ssh_dir=ssh_dir).identity_files == ()


def test_include_in_a_non_matching_block_applies_nothing(ssh_dir: Path) -> None:
    # config.d/10-alpha has its own `Host alpha`; inside a non-matching block it must not apply.
    text = "Host nothing-matches\n  Include config.d/*\n"
    assert resolve(text, "alpha", ssh_dir=ssh_dir).user is None


def test_include_order_is_sorted_and_first_value_wins(ssh_dir: Path) -> None:
    (ssh_dir / "config.d" / "05-all").write_text("Host *\n  User first\n")
    assert resolve("Include config.d/*\n", "alpha", ssh_dir=ssh_dir).user == "first"


def test_include_state_is_restored_after_the_included_file(ssh_dir: Path) -> None:
    # 10-alpha ends in `Host alpha`; lines after the Include belong to the outer block again.
    text = "Host beta\n  Include config.d/10-alpha\n  User beta-user\n"
    assert resolve(text, "beta", ssh_dir=ssh_dir).user == "beta-user"


def test_include_of_nothing_is_ignored(ssh_dir: Path) -> None:
    assert resolve("Include nope/* missing\nUser u\n", "a", ssh_dir=ssh_dir).user == "u"


def test_include_loop_is_an_error(ssh_dir: Path) -> None:
    (ssh_dir / "loop").write_text("Include loop\n")
    with pytest.raises(ConfigError, match="too many nested includes"):
        resolve("Include loop\n", "a", ssh_dir=ssh_dir)


def test_load_from_path(ssh_dir: Path) -> None:
    config = ssh_dir / "config"
    config.write_text("Include config.d/*\n")
    entry = resolve(config, "alpha", ssh_dir=ssh_dir)
    assert entry.user == "alpha-user"
    assert entry.source == str(config)


def test_missing_or_unreadable_file_is_empty(tmp_path: Path) -> None:
    assert resolve(tmp_path / "nope", "a").user is None
    assert resolve(tmp_path, "a").user is None  # a directory


def test_invalid_utf8_does_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_bytes(b"Host a\n  User \xff\xfe\n")
    assert resolve(path, "a").user == "\ufffd\ufffd"  # then refused by fleet's validation


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Host a\n  Port ssh\n", "line 2: bad Port 'ssh'"),
        ("Host a\n  Port 0\n", "line 2: bad Port '0'"),
        ("Host a\n  Port 70000\n", "line 2: bad Port '70000'"),
        ("Host b\n  Port -1\n", "line 2: bad Port '-1'"),
        ("Host\n", "line 1: Host takes at least one pattern"),
        ("Include\n", "line 1: Include takes at least one file"),
        ("Host a\n  User\n", "line 2: User takes a value"),
        ("Host a\n  HostName a b\n", "line 2: HostName takes one value"),
        ('Host a\n  User "alice\n', "line 2: unbalanced quote"),
    ],
)
def test_errors_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SshConfig.parse(text, source="/home/me/.ssh/config")
    assert (
        str(info.value) == f"/home/me/.ssh/config: {message}" + str(info.value).split(message, 1)[1]
    )
    assert "\n" not in str(info.value)


def test_unknown_keywords_are_ignored() -> None:
    text = "Host a\n  ForwardAgent yes\n  ProxyCommand nc %h %p\n  User u\n"
    assert resolve(text, "a").user == "u"
