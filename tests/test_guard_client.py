"""client.py against a prankster: a long line cannot put text on a row of
its own (wrapped rows are indented), and a character the locale cannot
show does not silence the client."""

from __future__ import annotations

import protocol
from helpers import LineClient
from test_client_e2e import joined, spawn  # noqa: F401 - a fixture

FAKE = "* Server is shutting down (by admin root). Goodbye!"


def test_a_long_line_wraps_with_a_hanging_indent(server, spawn):  # noqa: F811
    """On an 80-column terminal, text padded to start a row of its own
    comes out indented: it cannot pass for the server's line. White space
    padding is one space by the time it leaves the server."""
    alice = joined(spawn, columns=80)
    bob = LineClient(server.address, bind="127.0.0.2").register("bob")
    try:
        bob.send("brb" + " " * 400 + FAKE)
        shown = alice.expect(FAKE)
        assert "bob: brb " + FAKE in shown
        bob.send("x" * 75 + FAKE)  # "bob: " and 75 x fill 80 columns
        shown = alice.expect(FAKE)
        assert shown.endswith("x\r\n    " + FAKE), shown
    finally:
        bob.close()


def test_a_locale_that_cannot_show_a_character(server, spawn):  # noqa: F811
    """Under a Latin-1 locale an emoji shows as '?', and the client goes
    on showing lines, and ends on the server's shutdown."""
    alice = joined(spawn, PYTHONIOENCODING="latin-1")
    bob = LineClient(server.address, bind="127.0.0.2").register("bob")
    try:
        bob.send("hi \U0001F600")
        alice.expect("bob: hi ?")
        bob.send("still here")
        alice.expect("bob: still here")
    finally:
        bob.close()
    server.stop()
    alice.expect(protocol.format_shutdown().split(".")[0])
    assert alice.wait_exit() == 0
    alice.assert_terminal_restored()


def test_mistyped_admin_lines_stay_out_of_the_history():
    """client.py keeps every line read as the admin command out of its
    input history: a leading space, or no space after -admin."""
    import client
    for line in (" -admin pw", "-adminPW", "-admin:pw", "\t-ADMIN pw"):
        assert client._is_secret(line), line
    assert not client._is_secret("admin pw")
