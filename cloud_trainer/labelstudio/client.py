"""The few Label Studio REST calls the loop needs, over httpx.

Why not ``label-studio-sdk``: its 2.x release pins ``opencv-python-headless<4.13`` and pulls
pandas, nltk, datamodel-code-generator and requests-mock, more than the trainer itself, for a
handful of documented endpoints. The SDK stays what the benchmark compares against.

Authentication takes either kind of token Label Studio issues: a personal access token (a
JWT refresh token, exchanged at ``/api/token/refresh/`` for short-lived access tokens and
refreshed on expiry) or a legacy ``Token`` where the organisation enabled those. Errors map
to :mod:`cloud_trainer.errors` at this boundary: unreachable, refused token, not found, or
the status and Label Studio's own reason. Reads are retried on connection errors; writes are
not (an import that timed out may have landed: ``labels push`` re-lists before importing).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from cloud_trainer.errors import (
    LabelError,
    LabelStudioAuthError,
    LabelStudioError,
    LabelStudioNotFoundError,
    LabelStudioUnavailableError,
)

if TYPE_CHECKING:
    from cloud_trainer.config import LabelStudioSection

log = logging.getLogger(__name__)

READ_ATTEMPTS = 3
MAX_REASON_CHARS = 400


def _is_personal_access_token(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class LabelStudioClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token:
            raise LabelStudioAuthError("no Label Studio token: set labeling.label_studio.token")
        self.url = url.rstrip("/")
        self._token = token
        self._access: str | None = None
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
            headers={"Accept": "application/json"},
        )

    @classmethod
    def from_section(cls, section: LabelStudioSection) -> LabelStudioClient:
        if section.url is None:
            raise LabelError("set labeling.label_studio.url to the Label Studio server")
        if section.token is None:
            raise LabelError(
                "set labeling.label_studio.token or token_file (a personal access token from "
                "Label Studio's Account & Settings)"
            )
        return cls(section.url, section.token.get_secret_value(), timeout_s=section.timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _auth_header(self, *, refresh: bool = False) -> str:
        if not _is_personal_access_token(self._token):
            return f"Token {self._token}"
        if self._access is None or refresh:
            body = self._send(
                "POST", "/api/token/refresh/", json={"refresh": self._token}, auth=False
            )
            access = body.get("access") if isinstance(body, dict) else None
            if not isinstance(access, str):
                raise LabelStudioAuthError("Label Studio gave no access token for this token")
            self._access = access
        return f"Bearer {self._access}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; the parsed JSON body (None when empty)."""
        try:
            return self._send(method, path, **kwargs)
        except LabelStudioAuthError:
            if not _is_personal_access_token(self._token) or self._access is None:
                raise
            self._auth_header(refresh=True)  # the access token expired: one refresh
            return self._send(method, path, **kwargs)

    def _send(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        headers = {"Authorization": self._auth_header()} if auth else {}
        attempts = READ_ATTEMPTS if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
                break
            except httpx.TransportError as exc:
                if attempt == attempts:
                    raise LabelStudioUnavailableError(
                        f"Label Studio at {self.url} did not answer {method} {path}: "
                        f"{type(exc).__name__}: {exc}. Is it running and the URL right?"
                    ) from exc
                time.sleep(0.5 * attempt)
        return self._parse(method, path, response)

    def _parse(self, method: str, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        if status < 300:
            if not response.content:
                return None
            try:
                return response.json()
            except json.JSONDecodeError as exc:
                raise LabelStudioError(
                    f"{method} {path}: Label Studio answered {status} with a body that is not "
                    "JSON (a proxy or login page in between?)"
                ) from exc
        reason = response.text[:MAX_REASON_CHARS].strip()
        where = f"{method} {path} -> {status}"
        if status == 401:
            raise LabelStudioAuthError(
                f"{where}: Label Studio refused the token ({reason}). Use a personal access "
                "token (Account & Settings), or enable legacy tokens for the organisation."
            )
        if status == 403:
            hint = ""
            if "reserved network address" in reason:
                hint = (
                    " Label Studio's SSRF protection blocks private addresses: let it reach "
                    "the object store with USE_DEFAULT_BANNED_SUBNETS=false (and list the "
                    "subnets to keep blocked in USER_ADDITIONAL_BANNED_SUBNETS)."
                )
            raise LabelStudioError(f"{where}: Label Studio refused ({reason}).{hint}")
        if status == 404:
            raise LabelStudioNotFoundError(f"{where}: not found ({reason})")
        raise LabelStudioError(f"{where}: {reason}")

    # ------------------------------------------------------------------ projects
    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project with exactly this title (Label Studio's filter is a substring match)."""
        page = 1
        while True:
            body = self.request(
                "GET", "/api/projects/", params={"title": title, "page": page, "page_size": 100}
            )
            for project in body.get("results", []):
                if project.get("title") == title:
                    return dict(project)
            if not body.get("next"):
                return None
            page += 1

    def create_project(self, title: str, label_config: str, description: str) -> dict[str, Any]:
        body = self.request(
            "POST",
            "/api/projects/",
            json={"title": title, "label_config": label_config, "description": description},
        )
        return dict(body)

    def project(self, project_id: int) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/projects/{project_id}/"))

    def update_label_config(self, project_id: int, label_config: str) -> None:
        self.request("PATCH", f"/api/projects/{project_id}/", json={"label_config": label_config})

    def s3_storages(self, project_id: int) -> list[dict[str, Any]]:
        body = self.request("GET", "/api/storages/s3/", params={"project": project_id})
        return [dict(item) for item in body] if isinstance(body, list) else []

    def create_s3_storage(self, project_id: int, settings: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.request("POST", "/api/storages/s3/", json={"project": project_id, **settings})
        )

    # ------------------------------------------------------------------ tasks
    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Create ``tasks`` (with their predictions) in one request; their new ids."""
        body = self.request(
            "POST",
            f"/api/projects/{project_id}/import",
            params={"return_task_ids": "true"},
            json=list(tasks),
        )
        ids = body.get("task_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or len(ids) != len(tasks):
            raise LabelStudioError(
                f"import into project {project_id} answered {str(body)[:200]!r}, not "
                f"{len(tasks)} task ids"
            )
        return [int(i) for i in ids]

    def task_pages(
        self, project_id: int, *, with_annotations: bool, page_size: int = 100
    ) -> Iterator[list[dict[str, Any]]]:
        """Every task of a project, a page at a time (one page in memory), in id order."""
        page = 1
        seen = 0
        while True:
            params: dict[str, Any] = {
                "project": project_id,
                "page": page,
                "page_size": page_size,
                "resolve_uri": "false",
            }
            if with_annotations:
                params["fields"] = "all"
            try:
                body = self.request("GET", "/api/tasks/", params=params)
            except LabelStudioNotFoundError:
                if page > 1:
                    return  # past the last page (the total changed under us)
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else []
            if tasks:
                yield [dict(task) for task in tasks]
            seen += len(tasks)
            total = body.get("total", 0) if isinstance(body, dict) else 0
            if not tasks or seen >= int(total):
                return
            page += 1

    def iter_tasks(
        self, project_id: int, *, with_annotations: bool, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """:meth:`task_pages`, one task at a time."""
        for page in self.task_pages(
            project_id, with_annotations=with_annotations, page_size=page_size
        ):
            yield from page

    def task(self, task_id: int, *, resolve_uri: bool = False) -> dict[str, Any]:
        params = {"resolve_uri": str(resolve_uri).lower()}
        return dict(self.request("GET", f"/api/tasks/{task_id}/", params=params))

    def create_annotation(
        self, task_id: int, result: list[dict[str, Any]], *, was_cancelled: bool = False
    ) -> dict[str, Any]:
        """Submit an annotation as a person would from the labeling screen."""
        body = self.request(
            "POST",
            f"/api/tasks/{task_id}/annotations/",
            json={"result": result, "was_cancelled": was_cancelled},
        )
        return dict(body)

    def update_annotation(self, annotation_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/api/annotations/{annotation_id}/", json=fields))
