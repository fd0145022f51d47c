"""A DNS server for tests: UDP on 127.0.0.1, port 0, answering from a dict of records.

Queries are read and answers built with dnspython's own message code. A name with records of
any type answers NOERROR (empty for other types); any other name answers NXDOMAIN.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping, Sequence

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

Records = Mapping[tuple[str, str], Sequence[str]]  # (name, type) -> records in zone-file text


def txt(value: str) -> str:
    """A TXT record's zone-file text: quoted strings of at most 255 characters each."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


class DnsServer:
    def __init__(self, records: Records) -> None:
        self.records = {
            (n.lower().rstrip("."), t.upper()): list(v) for (n, t), v in records.items()
        }
        self.names = {name for name, _ in self.records}
        self.queries: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            for question in query.question:
                name = question.name.to_text().lower().rstrip(".")
                rdtype = dns.rdatatype.to_text(question.rdtype)
                self.queries.append((name, rdtype))
                values = self.records.get((name, rdtype))
                if values:
                    response.answer.append(
                        dns.rrset.from_text_list(question.name, 300, "IN", rdtype, values)
                    )
                elif name not in self.names:
                    response.set_rcode(dns.rcode.NXDOMAIN)
            self._sock.sendto(response.to_wire(), peer)
