"""textclf.data: reading, downloading once, validating and splitting the data, whichever script asks."""

import gzip
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_reviews, write_csv

import textclf.data
import train_distilbert
from textclf.data import clean, first_invalid_utf8, load_reviews, read_reviews, split
from textclf.settings import RecipeError

IMDB = train_distilbert.DEFAULTS  # TEXT_COLUMN review, LABEL_COLUMNS sentiment, LABEL_NAMES negative,positive


def test_split_takes_rows_in_file_order():
    df = pd.DataFrame({"review": [f"review {i}" for i in range(50_000)], "sentiment": np.arange(50_000) % 2})
    train, valid, test = split(df, {"TRAIN_SIZE": 35_000, "VALID_SIZE": 5_000, "TEST_SIZE": 10_000})
    assert list(train.index) == list(range(35_000))
    assert list(valid.index) == list(range(35_000, 40_000))
    assert list(test.index) == list(range(40_000, 50_000))
    train, valid, test = split(df, {"TRAIN_SIZE": 2_000, "VALID_SIZE": 500, "TEST_SIZE": 300})
    assert (train.index[0], train.index[-1], len(train)) == (0, 1_999, 2_000)
    assert (valid.index[0], valid.index[-1], len(valid)) == (2_000, 2_499, 500)
    assert (test.index[0], test.index[-1], len(test)) == (2_500, 2_799, 300)


def test_split_asking_for_too_many_rows_is_a_clear_error():
    df = make_reviews(100)
    with pytest.raises(RecipeError, match=r"needs 101 rows .* the file has 100; lower --train-size"):
        split(df, {"TRAIN_SIZE": 60, "VALID_SIZE": 20, "TEST_SIZE": 21})


def test_a_local_path_that_is_no_file_names_both_forms(tmp_path):
    with pytest.raises(RecipeError, match=r"nope.csv is not a file here; give the path of an existing file, or a URL"):
        load_reviews(str(tmp_path / "nope.csv"), tmp_path / "data", IMDB)


def test_download_over_http_once(serve, tmp_path):
    payload = gzip.compress(make_reviews(50).to_csv(index=False).encode())
    base = serve({"movie_data.csv.gz": payload})
    path, reviews, _ = load_reviews(f"{base}/movie_data.csv.gz", tmp_path / "data", IMDB)
    assert path == tmp_path / "data" / "movie_data.csv.gz" and path.read_bytes() == payload
    assert len(serve.requests) == 1 and len(reviews) == 50
    again, reviews_again, _ = load_reviews(f"{base}/movie_data.csv.gz", tmp_path / "data", IMDB)
    assert again == path and reviews_again.equals(reviews)
    assert len(serve.requests) == 1  # the second call reuses the file
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        ".movie_data.csv.gz.source.json",
        "movie_data.csv.gz",
    ]
    record = json.loads((tmp_path / "data" / ".movie_data.csv.gz.source.json").read_text())
    assert record == {"url": f"{base}/movie_data.csv.gz", "sha256": hashlib.sha256(payload).hexdigest()}


def test_download_from_a_file_url(tmp_path):
    source = write_csv(make_reviews(20), tmp_path / "mine.csv")
    path, reviews, _ = load_reviews(source.as_uri(), tmp_path / "data", IMDB)
    assert path.name == "mine.csv" and len(reviews) == 20


def test_read_reviews_accepts_word_labels(tmp_path):
    df = pd.DataFrame(
        {"review": ["good", "bad", "fine"], "sentiment": ["positive", "Negative", "positive"], "extra": [1, 2, 3]}
    )
    read, names = read_reviews(write_csv(df, tmp_path / "words.csv"), None, IMDB)
    assert list(read.columns) == ["text", "label"] and list(read["label"]) == [1, 0, 1]
    assert names == ["Negative", "positive"]  # word labels name themselves, sorted


def test_clean_removes_line_break_tags():
    assert clean("Great.<br /><br />Really.<BR>ok<br/>") == "Great.  Really. ok "


# ------------------------------------------------------------------------------------- the download cache
def test_another_url_with_the_same_file_name_is_downloaded_anew(tmp_path, serve, capsys):
    a, b = make_reviews(40, seed=1), make_reviews(60, seed=2)
    base = serve(
        {
            "a/movie_data.csv.gz": gzip.compress(a.to_csv(index=False).encode()),
            "b/movie_data.csv.gz": gzip.compress(b.to_csv(index=False).encode()),
        }
    )
    assert len(load_reviews(f"{base}/a/movie_data.csv.gz", tmp_path, IMDB)[1]) == 40
    assert len(load_reviews(f"{base}/b/movie_data.csv.gz", tmp_path, IMDB)[1]) == 60
    assert f"was downloaded from {base}/a/movie_data.csv.gz, not from {base}/b" in capsys.readouterr().out
    assert len(load_reviews(f"{base}/b/movie_data.csv.gz", tmp_path, IMDB)[1]) == 60
    assert serve.requests == ["/a/movie_data.csv.gz", "/b/movie_data.csv.gz"]


def test_a_file_saved_by_hand_is_used_as_it_is(tmp_path):
    """The download error says: fetch it by hand and save it as data/NAME. Such a file has no source record (or
    not the recorded checksum), and is used without trying the URL again."""
    write_csv(make_reviews(30), tmp_path / "movie_data.csv.gz")
    assert len(load_reviews("http://127.0.0.1:9/movie_data.csv.gz", tmp_path, IMDB)[1]) == 30
    (tmp_path / ".movie_data.csv.gz.source.json").write_text(json.dumps({"url": "http://elsewhere/x", "sha256": "0"}))
    assert len(load_reviews("http://127.0.0.1:9/movie_data.csv.gz", tmp_path, IMDB)[1]) == 30


def test_the_first_byte_that_is_not_utf8_is_found_line_by_line_in_plain_and_gzip_files(tmp_path):
    text = 'review,sentiment\n"café ok",1\n"na\u00efve",0\n'.encode() + b'"caf\xe9",1\n"\xff",0\n'
    (tmp_path / "a.csv").write_bytes(text)
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(text))
    assert first_invalid_utf8(tmp_path / "a.csv", False) == (4, b"\xe9")
    assert first_invalid_utf8(tmp_path / "a.csv.gz", True) == (4, b"\xe9")
    with pytest.raises(
        RecipeError, match=r"a.csv.gz is not UTF-8 text: line 4 \(the header is line 1\) holds the byte b'\\xe9'"
    ):
        read_reviews(tmp_path / "a.csv.gz", None, IMDB)


# ------------------------------------------------------------------------------------- reliability, round four
def test_texts_are_read_exactly_as_written(tmp_path):
    """pandas read a column whose every text is a number as numbers: 007 became 7.0 and 1e5 100000.0."""
    (tmp_path / "codes.csv").write_text("review,sentiment\n007,1\n1e5,0\nN/A,1\nNone,0\n")
    frame, _ = read_reviews(tmp_path / "codes.csv", None, IMDB)
    assert frame["text"].tolist() == ["007", "1e5", "N/A", "None"] and frame["label"].tolist() == [1, 0, 1, 0]


def test_jsonl_lines_that_are_not_objects_or_text_are_named_by_line(tmp_path):
    for line, what in [("null", "null"), ("7", "a int"), ("[1, 2]", "a list")]:
        (tmp_path / "odd.jsonl").write_text('{"review": "a film", "sentiment": 1}\n' + line + "\n")
        with pytest.raises(RecipeError, match=rf"odd.jsonl: line 2 is {what}, not a JSON object \(one object a line\)"):
            read_reviews(tmp_path / "odd.jsonl", None, IMDB)
    (tmp_path / "odd.jsonl").write_text(
        '{"review": "a film", "sentiment": 1}\n{"review": "a \\ud800 b", "sentiment": 0}\n'
    )
    with pytest.raises(RecipeError, match=r"odd.jsonl: line 2 holds a lone surrogate escape .* in review, which is"):
        read_reviews(tmp_path / "odd.jsonl", None, IMDB)


def test_a_download_that_trickles_fails_instead_of_lasting_forever(tmp_path, monkeypatch):
    """A byte every 20 s never tripped the 60 s timeout of a read: a download now needs 16 kB a minute (here 16 kB
    in 0.5 s)."""
    import http.server
    import threading
    import time

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(textclf.data, "STALL", (0.5, 16_384))
    url = f"http://127.0.0.1:{server.server_port}/slow.csv"
    try:
        with pytest.raises(RecipeError, match=r"could not download .* \(the server sent \d+ bytes in the last 0.5 s\)"):
            load_reviews(url, tmp_path / "data", IMDB)
    finally:
        server.shutdown()
        server.server_close()
    assert list((tmp_path / "data").iterdir()) == []
