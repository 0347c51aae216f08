"""Opening a connection to the chat server: TCP, then TLS if asked, with
every way it can fail said in one line fit to show a person ("connection
refused (is the server running?)", "certificate verify failed: ...").

:func:`connect` returns a :data:`Connection`, the shared
``transport.LineSocket``: lines in, lines out, encrypted with TLS. What a
client does with it, joining and chatting, is ``client.py``.
"""

from __future__ import annotations

import re
import socket
import ssl
from typing import List, Optional

import protocol
import transport

#: Seconds to wait for the TCP connection to be set up, and then again for
#: the TLS handshake.
CONNECT_TIMEOUT = 10.0
#: Longest server line we keep. The server's own lines can be longer than
#: what users may send (``-users`` in a big room), so be generous.
MAX_SERVER_LINE = 1024 * 1024
#: Bytes of one endless line we skip before deciding the server is broken.
MAX_SERVER_DISCARD = 16 * 1024 * 1024


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:4321``, ``localhost:4321`` or ``[::1]:4321``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: The connection to the server: a socket read and written as lines (and
#: encrypted with TLS); one thread may read while another sends.
Connection = transport.LineSocket


def make_tls_context(cafile: Optional[str] = None,
                     insecure: bool = False) -> ssl.SSLContext:
    """A client context: TLS 1.2 or newer; the server's certificate is
    checked against ``cafile`` (PEM), or the system's authorities, and must
    name the host we connect to. ``insecure`` turns all checking off.
    Raises OSError (ssl.SSLError for a file that holds no certificate)."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


#: Verification failures where trusting the right certificate is the fix.
_UNTRUSTED_CODES = {
    2,   # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
}
_NAME_MISMATCH_CODES = {62, 64}  # X509_V_ERR_HOSTNAME/IP_ADDRESS_MISMATCH


def ssl_reason(error: ssl.SSLError) -> str:
    """An OpenSSL error as one short phrase: ``wrong version number``."""
    text = str(error.args[1] if len(error.args) > 1 else error)
    text = re.sub(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] ", "", text)
    return re.sub(r" \(_ssl\.c:\d+\)$", "", text)


def _certificate_problem(error: ssl.SSLCertVerificationError, where: str,
                         cafile: Optional[str] = None) -> str:
    """One line for a certificate the server showed that we do not trust,
    checked against ``cafile`` (the --cafile given, if any)."""
    why = (error.verify_message or ssl_reason(error)).rstrip(".")
    message = f"{where}: certificate verify failed: {why}"
    if error.verify_code in _UNTRUSTED_CODES and cafile:
        # The user trusted a file already: telling them to give one would
        # mislead; the file they gave is what does not fit.
        message += f"; the server's certificate is not signed by {cafile}"
    elif error.verify_code in _UNTRUSTED_CODES:
        message += ("; for a self-signed server use --cafile server.pem"
                    " (the server's certificate)")
    elif error.verify_code in _NAME_MISMATCH_CODES:
        message += ("; connect with --host set to a name the certificate"
                    " is for")
    return message


def _looks_like_text(data: bytes) -> bool:
    """True for the start of a plain-text chat line (``* ...``, ``! ...``)
    rather than a TLS record."""
    return data[:2] in (protocol.NOTICE.encode(), protocol.ERROR.encode())


def start_tls(sock: socket.socket, host: str, where: str,
              context: ssl.SSLContext,
              cafile: Optional[str] = None) -> transport.TLSLayer:
    """Run the TLS handshake on a connected socket, all of it within the
    socket's timeout. ``cafile`` is the file ``context`` trusts, if one
    was given (for the message). Raises OSError with one line fit to
    show."""
    tls = transport.TLSLayer(context, server_hostname=host)
    first: List[bytes] = []
    seconds = sock.gettimeout() or CONNECT_TIMEOUT
    hint = " (is the server running with TLS?)"
    try:
        transport.handshake(sock, tls, seconds, received=first.append)
        return tls
    except ssl.SSLCertVerificationError as error:
        try:  # tell the server why (an alert), so that its log says so
            sock.sendall(tls.encrypt(b""))
        except OSError:
            pass
        raise OSError(_certificate_problem(error, where, cafile)) from None
    except ssl.SSLError as error:
        said = b"".join(first).split(b"\n", 1)[0].decode(
            protocol.ENCODING, "replace")
        if said.startswith(protocol.ERROR):
            # A TLS server refusing the connection before its handshake
            # (full, too many from this address, a ban): its one line.
            shown = "".join(char for char in said[len(protocol.ERROR):]
                            if char.isprintable())
            raise OSError(f"{where}: {shown[:200]}") from None
        if first and _looks_like_text(first[0]):
            reason = "the server answered in plain text"
            hint = " (it is not running with TLS: connect without --tls)"
        else:
            reason = ssl_reason(error)
    except socket.timeout:
        reason = f"no answer in {seconds:g} s"
    except ConnectionError:
        reason = "the server closed the connection"
    except OSError as error:
        reason = error.strerror or str(error)
    raise OSError(f"TLS handshake with {where} failed: {reason}{hint}")


def connect(host: str, port: int,
            tls_context: Optional[ssl.SSLContext] = None,
            cafile: Optional[str] = None) -> Connection:
    """Connect to the server, over TLS with ``tls_context`` (which trusts
    ``cafile``, if one was given). Raises OSError with a message fit to
    show."""
    where = format_address(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except socket.gaierror as error:
        raise OSError(f"cannot find host {host!r}: {error.strerror}") from None
    except socket.timeout:
        raise OSError(f"cannot connect to {where}: timed out") from None
    except ConnectionRefusedError:
        raise OSError(f"cannot connect to {where}: connection refused (is"
                      " the server running?)") from None
    except OSError as error:
        raise OSError(f"cannot connect to {where}:"
                      f" {error.strerror or error}") from None
    # Chat lines are small: send each one at once instead of letting the
    # kernel wait to batch them (Nagle's algorithm). And probe a silent
    # server now and then (TCP keepalive): a network that fails without a
    # word (a laptop leaving its Wi-Fi) is then found out in about two
    # minutes, and we reconnect, instead of waiting for lines forever.
    transport.configure_socket(sock)
    tls = None
    if tls_context is not None:
        try:
            # Within the socket's timeout.
            tls = start_tls(sock, host, where, tls_context, cafile)
        except OSError:
            sock.close()
            raise
    sock.settimeout(None)  # from now on, block until something arrives
    return Connection(sock, tls, MAX_SERVER_LINE, MAX_SERVER_DISCARD)
