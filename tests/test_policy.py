"""Device-management policy: Apple-style keys parsed strictly, and who decides auto-install."""

from __future__ import annotations

import json

import pytest

from bsipatch.agent.policy import DECLARATION_TYPE, Policy, decide_auto_install
from bsipatch.errors import PolicyError


def test_empty_policy_keeps_defaults_and_user_decides():
    p = Policy.from_json(b"{}")
    assert p.present
    assert p.security_updates_enabled and p.rollback_allowed
    assert p.install_security_update == "Allowed"
    for user in (True, False):
        d = decide_auto_install(p, user)
        assert d.enabled is user
        assert d.decided_by == "user"


def test_bare_payload_with_every_key():
    doc = {
        "RapidSecurityResponse": {"Enable": True, "EnableRollback": False},
        "AutomaticActions": {
            "InstallSecurityUpdate": "AlwaysOn",
            "Download": "Allowed",
            "InstallOSUpdates": "AlwaysOff",
        },
        "PinnedRelease": "26.1 (a)",
    }
    p = Policy.from_json(json.dumps(doc).encode())
    assert p.rollback_allowed is False
    assert p.install_security_update == "AlwaysOn"
    assert p.install_os_updates == "AlwaysOff"
    assert p.pinned_release == "26.1 (a)"
    # to_dict round-trips through the parser
    again = Policy.from_json({"Payload": p.to_dict()["Payload"]})
    assert again == p


def test_declaration_envelope_is_accepted_and_identifier_kept():
    doc = {
        "Type": DECLARATION_TYPE,
        "Identifier": "com.example.sw",
        "ServerToken": "42",
        "Payload": {"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOff"}},
    }
    p = Policy.from_json(json.dumps(doc))
    assert p.identifier == "com.example.sw"
    assert p.server_token == "42"
    d = decide_auto_install(p, True)
    assert (d.enabled, d.decided_by) == (False, "policy")
    assert "AlwaysOff" in d.reason


def test_policy_always_on_overrides_user_off():
    p = Policy.from_json({"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOn"}})
    d = decide_auto_install(p, False)
    assert (d.enabled, d.decided_by) == (True, "policy")


def test_security_releases_disabled_forbids_everything():
    p = Policy.from_json({"RapidSecurityResponse": {"Enable": False}})
    d = decide_auto_install(p, True)
    assert (d.enabled, d.decided_by) == (False, "policy")
    ok, why = p.allows_release("26.1 (a)")
    assert not ok and "Enable" in why


def test_download_always_off_stops_auto_install():
    p = Policy.from_json({"AutomaticActions": {"Download": "AlwaysOff"}})
    assert decide_auto_install(p, True).enabled is False


def test_pinned_release_allows_only_that_release():
    p = Policy.from_json({"PinnedRelease": "26.1 (a)"})
    assert p.allows_release("26.1 (a)") == (True, "")
    ok, why = p.allows_release("26.1 (b)")
    assert not ok and "pinned" in why


def test_no_policy_default_is_not_present():
    assert Policy().present is False
    assert decide_auto_install(Policy(), True).decided_by == "user"


@pytest.mark.parametrize(
    "doc, fragment",
    [
        (b"not json", "JSON"),
        (b"[]", "object"),
        ({"Bogus": 1}, "Bogus"),
        ({"RapidSecurityResponse": {"Enable": True, "Typo": 1}}, "Typo"),
        ({"RapidSecurityResponse": {"Enable": "yes"}}, "true or false"),
        ({"RapidSecurityResponse": {"EnableRollback": 1}}, "true or false"),
        ({"RapidSecurityResponse": []}, "object"),
        ({"AutomaticActions": {"InstallSecurityUpdate": "Sometimes"}}, "Allowed"),
        ({"AutomaticActions": {"InstallSecurityUpdate": True}}, "Allowed"),
        ({"AutomaticActions": "AlwaysOn"}, "object"),
        ({"PinnedRelease": 5}, "string"),
        ({"PinnedRelease": "  "}, "non-empty"),
        ({"Type": "com.apple.configuration.passcode.settings", "Payload": {}}, "Type"),
        ({"Type": DECLARATION_TYPE, "Payload": [], "Identifier": "x"}, "Payload"),
        ({"Type": DECLARATION_TYPE, "Payload": {}, "Extra": 1}, "Extra"),
    ],
)
def test_invalid_documents_are_rejected_whole(doc, fragment):
    with pytest.raises(PolicyError, match=fragment):
        Policy.from_json(doc)


def test_wrong_value_late_in_document_rejects_everything_before_it():
    # a valid first half must not be half-applied: parsing returns nothing at all
    doc = {
        "RapidSecurityResponse": {"Enable": False},
        "AutomaticActions": {"InstallSecurityUpdate": "Never"},
    }
    with pytest.raises(PolicyError):
        Policy.from_json(doc)


def test_oversized_document_is_rejected():
    with pytest.raises(PolicyError, match="limit"):
        Policy.from_json(b" " * (70 * 1024) + b"{}")
