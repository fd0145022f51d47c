"""The desk's member pages (a publisher's): the list with counts, search and pages, one member
added, edited, unsubscribed on request or erased, the list as CSV, the two-step import (upload,
then the column mapping with the first rows); and the audit log."""

from __future__ import annotations

import base64
import binascii
import zlib

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter.content.mapping import Field
from newsletter.errors import NewsletterError
from newsletter.services import audit, bounces, erasure, members, membership
from newsletter.services.unit import Permission
from newsletter.storage.models import MemberStatus
from newsletter.web.auth import Editor
from newsletter.web.desk.base import MAX_ID, MAX_UPLOAD, DeskBase
from newsletter.web.pages import security_headers

# Short enough for a phone's select box; docs/desk.md says more of each.
FIELD_LABELS = {
    Field.EMAIL: "the address",
    Field.NAME: "the name",
    Field.FIRST_NAME: "first name",
    Field.LAST_NAME: "last name",
    Field.STATUS: "the status",
    Field.UNSUBSCRIBED_WHEN_SET: "unsubscribed if set",
    Field.BOUNCED_WHEN_SET: "bounced if set",
    Field.UNSUBSCRIBED_WHEN_TRUE: "unsubscribed if true",
    Field.ATTRIBUTES_JSON: "attributes (JSON)",
    Field.ATTRIBUTE: "an attribute",
    Field.SKIP: "nothing",
}


def _status(raw: str | None) -> MemberStatus | None:
    try:
        return MemberStatus(raw) if raw else None
    except ValueError:
        return None


def _number(raw: str | None, default: int = 1) -> int:
    return int(raw) if raw and raw.isdigit() and len(raw) < 8 else default


def parse_attributes(text: str) -> dict[str, str]:
    """The attributes box: one `name = value` a line (a line without a value removes it)."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise NewsletterError(f"attributes, line {number}: write name = value")
        found[name.strip()] = value.strip()
    return found


def pack(data: bytes) -> str:
    """An upload carried from the mapping step to the import, in a hidden field."""
    return base64.b64encode(zlib.compress(data, 6)).decode("ascii")


def unpack(text: str) -> bytes:
    """What `pack` made, bounded (a forged field cannot inflate past MAX_UPLOAD)."""
    try:
        packed = base64.b64decode(text.encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        data = inflater.decompress(packed, MAX_UPLOAD + 1)
    except (binascii.Error, UnicodeEncodeError, zlib.error, ValueError):
        raise NewsletterError("the upload could not be read back: choose the file again") from None
    if len(data) > MAX_UPLOAD or inflater.unconsumed_tail:
        raise NewsletterError("the file is larger than 20 MB")
    return data


class MemberPages:
    def __init__(self, desk: DeskBase) -> None:
        self.desk = desk
        self.gateway = desk.gateway

    def routes(self) -> list[Route]:
        p, f, need = self.desk.guard_page, self.desk.guard_form, Permission.MEMBERS
        one = "/desk/members/{member_id:int}"
        return [
            Route("/desk/members", p(self.members_page, need), methods=["GET"]),
            Route("/desk/members/add", f(self.add, need), methods=["POST"]),
            Route("/desk/members/export", f(self.export, need), methods=["POST"]),
            Route("/desk/members/import", f(self.import_upload, need), methods=["POST"]),
            Route("/desk/members/import/run", f(self.import_run, need), methods=["POST"]),
            Route(one, p(self.member_page, need), methods=["GET"]),
            Route(f"{one}/edit", f(self.edit, need), methods=["POST"]),
            Route(f"{one}/unsubscribe", f(self.unsubscribe, need), methods=["POST"]),
            Route(f"{one}/erase", f(self.erase, need), methods=["POST"]),
            Route(f"{one}/bounces", p(self.bounces_page, need), methods=["GET"]),
            Route("/desk/audit", p(self.audit_page), methods=["GET"]),
        ]

    # --- the list ------------------------------------------------------------------------------

    async def _list(
        self,
        editor: Editor,
        q: str = "",
        status: MemberStatus | None = None,
        page: int = 1,
        report: members.ImportReport | None = None,
        notice: tuple[str, str] = ("", ""),
    ) -> Response:
        found = await self.gateway.read(membership.overview, q, status, page)
        return self.desk.page(
            "members.html",
            editor,
            found=found,
            statuses=list(MemberStatus),
            report=report,
            notice=notice[0],
            notice_kind=notice[1],
        )

    async def members_page(self, request: Request, editor: Editor) -> Response:
        params = request.query_params
        return await self._list(
            editor,
            params.get("q", "")[:200],
            _status(params.get("status")),
            _number(params.get("page")),
            notice=self.desk.auth.notice(request),
        )

    async def add(self, request: Request, editor: Editor, form: FormData) -> Response:
        email, name = str(form.get("email", ""))[:1000], str(form.get("name", ""))[:1000]
        try:
            added = await self.gateway.call(editor.actor, membership.add_member, email, name)
        except NewsletterError as exc:
            return self.desk.back("/desk/members", str(exc), error=True)
        return self.desk.back(f"/desk/members/{added.id}", f"{added.email} added")

    async def export(self, request: Request, editor: Editor, form: FormData) -> Response:
        status = _status(str(form.get("status", "")))
        done = await self.gateway.call(editor.actor, membership.export_members, status)
        headers = security_headers()
        name = f"members-{status}.csv" if status else "members.csv"
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return Response(done.text, media_type="text/csv; charset=utf-8", headers=headers)

    # --- one member ----------------------------------------------------------------------------

    def _gone(self, editor: Editor, text: str) -> Response:
        return self.desk.page("message.html", editor, 404, title="No such member", text=text)

    async def member_page(self, request: Request, editor: Editor) -> Response:
        member_id = int(request.path_params["member_id"])
        if not 1 <= member_id <= MAX_ID:
            return self._gone(editor, f"There is no member #{member_id}.")
        try:
            found = await self.gateway.read(membership.detail, member_id)
        except membership.NoSuchMember as exc:
            return self._gone(editor, str(exc))
        text, kind = self.desk.auth.notice(request)
        history = await self.gateway.read(audit.recent, 50, member_id=member_id)
        return self.desk.page(
            "member.html",
            editor,
            member=found,
            history=history,
            attributes="\n".join(f"{k} = {v}" for k, v in sorted(found.attributes.items())),
            notice=text,
            notice_kind=kind,
        )

    async def bounces_page(self, request: Request, editor: Editor) -> Response:
        """One member: status, why they left, and what came back for them (bounce history)."""
        member_id = int(request.path_params["member_id"])
        history = None
        if member_id <= MAX_ID:
            history = await self.gateway.read(bounces.history, member_id)
        if history is None:
            return self.desk.page(
                "message.html", editor, 404, title="No such member", text="There is no such member."
            )
        return self.desk.page(
            "member_bounces.html",
            editor,
            history=history,
            threshold=self.gateway.services.settings.bounces.threshold,
        )

    async def _act(self, request: Request, editor: Editor, work: str, form: FormData) -> Response:
        member_id = int(request.path_params["member_id"])
        page = f"/desk/members/{member_id}"
        if not 1 <= member_id <= MAX_ID:
            return self._gone(editor, f"There is no member #{member_id}.")
        reason = str(form.get("reason", ""))[:2000]
        try:
            if work == "edit":
                attributes = parse_attributes(str(form.get("attributes", ""))[:200_000])
                name = str(form.get("name", ""))[:1000]
                await self.gateway.call(
                    editor.actor,
                    membership.edit_member,
                    member_id,
                    name=name,
                    attributes=attributes,
                )
                return self.desk.back(page, "saved")
            if work == "unsubscribe":
                done = await self.gateway.call(
                    editor.actor, membership.unsubscribe_member, member_id, reason=reason
                )
                return self.desk.back(page, f"{done.email} is unsubscribed: no mail goes to them")
            if form.get("confirm") != "yes":
                return self.desk.back(page, "tick the box to confirm the erasure", error=True)
            erased = await self.gateway.call(
                editor.actor, erasure.erase_member, member_id, reason=reason
            )
            return self.desk.back(page, f"member #{erased.member_id} erased: {erased.summary}")
        except membership.NoSuchMember as exc:
            return self._gone(editor, str(exc))
        except NewsletterError as exc:
            return self.desk.back(page, str(exc), error=True)

    async def edit(self, request: Request, editor: Editor, form: FormData) -> Response:
        return await self._act(request, editor, "edit", form)

    async def unsubscribe(self, request: Request, editor: Editor, form: FormData) -> Response:
        return await self._act(request, editor, "unsubscribe", form)

    async def erase(self, request: Request, editor: Editor, form: FormData) -> Response:
        return await self._act(request, editor, "erase", form)

    # --- import: upload, then the mapping ------------------------------------------------------

    async def _mapping(
        self,
        editor: Editor,
        data: bytes,
        filename: str,
        overrides: dict[str, str] | None = None,
        error: str = "",
    ) -> Response:
        try:
            seen = await self.gateway.offload(members.preview, data)
        except NewsletterError as exc:
            return self.desk.back("/desk/members", f"{filename}: {exc}", error=True)
        chosen = [
            Field((overrides or {}).get(c, f))
            for c, f in zip(seen.layout.columns, seen.layout.fields, strict=True)
        ]
        samples = [
            [row[i] if i < len(row) else "" for row in seen.rows] for i in range(len(chosen))
        ]
        return self.desk.page(
            "members_import.html",
            editor,
            400 if error else 200,
            layout=seen.layout,
            chosen=chosen,
            samples=samples,
            rows=seen.rows,
            lines=seen.lines,
            fields=FIELD_LABELS,
            data=pack(data),
            filename=filename,
            error=error,
        )

    async def import_upload(self, request: Request, editor: Editor, form: FormData) -> Response:
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            return self.desk.back("/desk/members", "choose a CSV file to import", error=True)
        data = await upload.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            return self.desk.back("/desk/members", "the file is larger than 20 MB", error=True)
        return await self._mapping(editor, data, upload.filename[:200])

    async def import_run(self, request: Request, editor: Editor, form: FormData) -> Response:
        filename = str(form.get("filename", "upload.csv"))[:200] or "upload.csv"
        try:
            data = unpack(str(form.get("data", "")))
            seen = await self.gateway.offload(members.preview, data)
        except NewsletterError as exc:
            return self.desk.back("/desk/members", str(exc), error=True)
        overrides = {
            column: str(form.get(f"field-{i}", field))[:40]
            for i, (column, field) in enumerate(
                zip(seen.layout.columns, seen.layout.fields, strict=True)
            )
        }
        try:
            report = await self.gateway.call(
                editor.actor, members.import_members, data, source=filename, overrides=overrides
            )
        except NewsletterError as exc:  # the mapping does not hold: the step again, as chosen
            valid = {c: f for c, f in overrides.items() if f in set(Field)}
            return await self._mapping(editor, data, filename, valid, str(exc))
        return await self._list(editor, report=report)

    # --- the audit log ------------------------------------------------------------------------

    async def audit_page(self, request: Request, editor: Editor) -> Response:
        return self.desk.page(
            "audit.html", editor, entries=await self.gateway.read(audit.recent, 200)
        )
