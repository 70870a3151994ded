"""Atomic, pickle-free file writes (temp file in the same folder, fsync, rename), and the finished
pieces of long jobs kept across a kill (:class:`PartialFolder`)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import, not beside threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    if path.is_dir():  # else os.replace fails naming the temporary file
        raise IsADirectoryError(f"{path}: is a folder, not a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600) and os.replace keeps that: give it the mode a plain
    # open() would (the old file's, else 0666 less the umask), so others can read results and runs.
    # Set after the writer ran: some (safetensors' save_file) write a new file in the temporary's place.
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, mode)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_output_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path, refused at once when it names a folder: a long job checks its output
    before the work, not when it comes to write. ``what``: how the message names the file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; give the {what} to write")
    return path


def check_output_folder(path: str | Path, what: str) -> Path:
    """``path`` as a Path, refused at once when it, or the nearest part of it that exists, is a
    file (the folder could not be made). ``what``: how the message names the folder."""
    path = Path(path)
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing if existing != path.absolute() else path}: is a file; give a folder for {what}")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda p: p.write_bytes(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def atomic_save_file(path: Path, save: Callable[[str], None]) -> None:
    """Atomic wrapper for writers that take a filename (safetensors.save_file, np.save, savefig)."""
    _atomic(path, lambda p: save(str(p)))


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG at ``path`` (folders made, written atomically), then closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    atomic_save_file(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))
    plt.close(fig)
    return path


def read_text_file(path: str | Path) -> str:
    """Read UTF-8 text (a leading byte-order mark dropped); a bad byte raises one line naming the
    file and the byte offset."""
    path = Path(path)
    data = path.read_bytes()
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 at byte offset {err.start + bom} ({err.reason})") from None


def _jsonl_lines(path: str | Path) -> Iterable[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line; a bad line raises naming the file and line."""
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """Lines of JSON objects; errors name the file and line."""
    rows = []
    for n, obj in _jsonl_lines(path):
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object")
        rows.append(obj)
    return rows


def read_jsonl_texts(path: str | Path, key: str = "text", require_content: bool = False) -> list[str]:
    """Lines of ``{"text": ...}``; errors name the file and line. ``require_content``: refuse a text
    an encoder would refuse (empty, whitespace or control characters only) by its line."""
    from invemb.encoder import has_content

    texts: list[str] = []
    for n, obj in _jsonl_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
            raise ValueError(f"{path}:{n}: expected an object with a string {key!r} field")
        if require_content and not has_content(obj[key]):
            raise ValueError(f"{path}:{n}: the text is empty or holds only whitespace / control characters")
        texts.append(obj[key])
    return texts


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def content_key(*parts: Any) -> str:
    """sha256 of ``parts`` as sorted-key JSON (what a cached or partial result was computed from)."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str).encode()).hexdigest()


class PartialFolder:
    """A folder of the finished pieces of a long job, so that the same job run again after a kill
    redoes only the rest. Its ``key`` (see :func:`content_key`) says what the pieces were computed
    from: pieces of another key are not seen, and the first piece written empties them out (a run
    with other settings that dies before finishing a piece leaves the folder as it was). Pieces are
    written atomically, so a piece that exists is whole; :meth:`discard` removes the folder once the
    job's output is written."""

    def __init__(self, folder: str | Path, key: str):
        self.folder, self.key = Path(folder), key
        stamp = self.folder / "fingerprint.json"
        self.ours = stamp.exists() and json.loads(stamp.read_text()).get("key") == key

    def has(self, name: str) -> bool:
        return self.ours and (self.folder / name).exists()

    def path(self, name: str) -> Path:
        """Where piece ``name`` is read from."""
        return self.folder / name

    def slot(self, name: str) -> Path:
        """Where piece ``name`` is to be written (atomically, by the caller)."""
        if not self.ours:
            if self.folder.is_dir():
                shutil.rmtree(self.folder)
            elif self.folder.exists():  # a stray file where the folder goes
                self.folder.unlink()
            atomic_write_json(self.folder / "fingerprint.json", {"key": self.key})
            self.ours = True
        return self.folder / name

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
