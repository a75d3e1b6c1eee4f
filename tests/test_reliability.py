"""Bad input is a one-line error that names the problem and leaves no partial file: downloads, data files, settings
and caches. Both scripts, CPU, offline."""

import gzip
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import cli, make_reviews, write_csv

import textclf.data
import train_distilbert as td
import train_lstm_baseline as tl
from textclf.data import read_reviews

ROOT = Path(__file__).resolve().parents[1]


def lstm_args(tmp_path, url, **overrides):
    settings = {
        "data_url": url,
        "data_dir": tmp_path / "data",
        "train_size": 600,
        "valid_size": 200,
        "test_size": 200,
        "vocab_size": 100,
        "embedding_dim": 8,
        "hidden_dim": 16,
        "batch_size": 32,
        "epochs": 2,
        "learning_rate": 0.01,
        "out_dir": tmp_path / "out",
        **overrides,
    }
    return cli(**settings)


def distilbert_args(tmp_path, url, model="unused", **overrides):
    settings = {
        "data_url": url,
        "data_dir": tmp_path / "data",
        "model_name": model,
        "train_size": 600,
        "valid_size": 200,
        "test_size": 200,
        "max_length": 64,
        "epochs": 2,
        "learning_rate": 3e-3,
        "out_dir": tmp_path / "out",
        **overrides,
    }
    return cli(**settings)


SCRIPTS = {"distilbert": (td, distilbert_args), "lstm": (tl, lstm_args)}


@pytest.fixture(params=SCRIPTS)
def script(request):
    return SCRIPTS[request.param]


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*")) if Path(path).exists() else []


def fails(module, argv, *messages):
    """main(argv) exits 1 with one line that contains each message."""
    with pytest.raises(SystemExit) as exit:
        module.main(argv)
    text = str(exit.value.code)
    assert text.startswith("error: ") and "\n" not in text, text
    for message in messages:
        assert message in text, text
    return text


# ------------------------------------------------------------------------------------- downloads
def test_http_error_names_the_url_and_the_way_out(script, tmp_path, serve):
    module, args = script
    url = serve({}) + "/movie_data.csv.gz"
    fails(
        module,
        args(tmp_path, url),
        f"could not download {url}",
        "HTTP Error 404",
        "save it as " + str(tmp_path / "data" / "movie_data.csv.gz"),
        "--data-url /path/to/movie_data.csv.gz",
    )
    assert files_under(tmp_path / "data") == []


def test_unreachable_server_is_a_clear_error(script, tmp_path):
    module, args = script
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    fails(module, args(tmp_path, f"http://127.0.0.1:{port}/movie_data.csv.gz"), "could not download", "refused")
    assert files_under(tmp_path / "data") == []


def test_connection_dropped_mid_download_leaves_nothing(script, tmp_path, serve):
    module, args = script
    whole = gzip.compress(make_reviews(500).to_csv(index=False).encode())
    url = serve({"movie_data.csv.gz": (whole[:1000], len(whole))}) + "/movie_data.csv.gz"
    fails(
        module,
        args(tmp_path, url),
        f"could not download {url}",
        f"the connection closed after 1,000 of {len(whole):,} bytes",
        "save it as",
    )
    assert files_under(tmp_path / "data") == []


def test_truncated_gzip_download_leaves_nothing(script, tmp_path, serve):
    module, args = script
    whole = gzip.compress(make_reviews(500).to_csv(index=False).encode())
    url = serve({"movie_data.csv.gz": whole[: len(whole) // 2]}) + "/movie_data.csv.gz"
    fails(module, args(tmp_path, url), "nothing was saved", "not a readable CSV gzip file")
    assert files_under(tmp_path / "data") == []


def test_html_error_page_saved_as_data_is_refused(script, tmp_path, serve):
    module, args = script
    page = b"<!DOCTYPE html>\n<html><body>Rate limit exceeded, try again later</body></html>\n"
    url = serve({"movie_data.csv.gz": page}) + "/movie_data.csv.gz"
    fails(module, args(tmp_path, url), "nothing was saved", "is an HTML page")
    assert files_under(tmp_path / "data") == []


def test_empty_download_is_refused(script, tmp_path, serve):
    module, args = script
    url = serve({"movie_data.csv.gz": b""}) + "/movie_data.csv.gz"
    fails(module, args(tmp_path, url), "nothing was saved", "not a readable CSV file")
    assert files_under(tmp_path / "data") == []


def test_interrupted_download_leaves_nothing(tmp_path, serve, monkeypatch):
    url = serve({"movie_data.csv.gz": gzip.compress(make_reviews(500).to_csv(index=False).encode())})
    monkeypatch.setattr(textclf.data, "read_reviews", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        textclf.data.load_reviews(url + "/movie_data.csv.gz", tmp_path / "data", td.DEFAULTS)
    assert files_under(tmp_path / "data") == []


# ------------------------------------------------------------------------------------- the CSV
BAD_CSVS = {
    "no sentiment column": (
        pd.DataFrame({"review": ["a", "b"], "label": [0, 1]}),
        ["has no sentiment column", "found columns ['review', 'label']"],
    ),
    "labels not 0/1": (
        pd.DataFrame({"review": ["a", "b", "c", "d"], "sentiment": [0, 1, 2, 5]}),
        [
            "sentiment holds integer labels, named by LABEL_NAMES (negative,positive) as 0..1",
            "rows 2, 3 (0-based",
            "hold '2'",
            "--label-names a,b,c",
        ],
    ),
    "numbers and words": (
        pd.DataFrame({"review": ["a", "b", "c"], "sentiment": ["positive", "1", "negative"]}),
        ["sentiment mixes numbers and words: row 1 (0-based", "holds '1' while others hold 'positive'"],
    ),
    "labels in two cases": (
        pd.DataFrame({"review": ["a", "b", "c", "d"], "sentiment": ["positive", "negative", "Positive", "negative"]}),
        [
            "sentiment holds labels that differ only in case, 'Positive' in row 2 (0-based",
            "and 'positive' in row 0 (0-based",
            "write each class one way",
        ],
    ),
    "missing label": (
        pd.DataFrame({"review": ["a", "b", "c"], "sentiment": [1, None, 0]}),
        ["missing sentiment label in row 1 (0-based"],
    ),
    "empty review": (
        pd.DataFrame({"review": ["fine", "  ", None, "ok"], "sentiment": [1, 0, 1, 0]}),
        ["empty or missing review in rows 1, 2 (0-based"],
    ),
}


@pytest.mark.parametrize("case", BAD_CSVS)
def test_bad_csv_is_refused_before_training(script, tmp_path, case):
    module, args = script
    df, messages = BAD_CSVS[case]
    csv = write_csv(df, tmp_path / "reviews.csv")
    fails(module, args(tmp_path, csv.as_uri()), "nothing was saved", *messages)
    assert files_under(tmp_path / "data") == [] and files_under(tmp_path / "out") == []


def test_a_file_not_in_utf8_names_its_line_and_the_way_to_convert_it(script, tmp_path):
    module, args = script
    rows = [f"review {i} was fine,{i % 2}" for i in range(1_000)]
    rows[4] = "the caf\xe9 scene was fine,0"
    (tmp_path / "latin1.csv").write_bytes(("review,sentiment\n" + "\n".join(rows) + "\n").encode("latin-1"))
    fails(
        module,
        args(tmp_path, str(tmp_path / "latin1.csv")),
        "latin1.csv is not UTF-8 text: line 6 (the header is line 1) holds the byte b'\\xe9'",
        "iconv -f latin1 -t utf-8",
    )


def test_rows_merged_by_a_stray_quote_are_refused_with_the_row(script, tmp_path):
    """An unclosed quote in row 2 makes the parser swallow row 3, label and all, into row 2's text."""
    module, args = script
    rows = [f'"review {i} was fine",{i % 2}' for i in range(1_000)]
    rows[2] = '"review 2 was fine,0'
    (tmp_path / "reviews.csv").write_text("review,sentiment\n" + "\n".join(rows) + "\n")
    fails(
        module,
        args(tmp_path, str(tmp_path / "reviews.csv")),
        "the review of row 2 (0-based, header not counted) "
        "holds what looks like the end of another row ('review 2 was fine,0\\n')",
        "a stray double quote",
        'written twice: ""',
    )
    assert files_under(tmp_path / "out") == []


def test_texts_over_several_lines_still_load(tmp_path):
    text = 'Scores so far:\n10,9\n8, and "a classic",\nsays the critic'
    rows = [f'"{text.replace(chr(34), chr(34) * 2)}",1', '"a dull film",0', '"two\r\nlines",1']
    (tmp_path / "multi.csv").write_text("review,sentiment\n" + "\n".join(rows) + "\n")
    frame, _ = read_reviews(tmp_path / "multi.csv", None, td.DEFAULTS)
    assert frame["text"].tolist() == [text, "a dull film", "two\r\nlines"] and frame["label"].tolist() == [1, 0, 1]


def test_a_damaged_file_already_in_the_data_dir_says_to_delete_it(script, tmp_path):
    module, args = script
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "movie_data.csv.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    local = tmp_path / "data" / "movie_data.csv.gz"
    fails(
        module,
        args(tmp_path, "http://127.0.0.1:9/movie_data.csv.gz"),
        f"{local} is not a readable CSV gzip file",
        f"delete {local} to download it again",
    )
    assert local.read_bytes() == b"\x1f\x8b\x08\x00broken"  # the user's file is never deleted for them


def test_too_few_rows_for_the_split(script, tmp_path):
    module, args = script
    csv = write_csv(make_reviews(900), tmp_path / "reviews.csv")
    fails(
        module,
        args(tmp_path, csv.as_uri()),
        "the split needs 1,000 rows",
        "the file has 900",
        "lower --train-size or --valid-size or --test-size",
    )
    assert files_under(tmp_path / "out") == []


# ------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "override, message",
    [
        ({"batch_size": 0}, "BATCH_SIZE (--batch-size) must be positive, got 0"),
        ({"train_size": -5}, "TRAIN_SIZE (--train-size) must be positive, got -5"),
        ({"epochs": 0}, "EPOCHS (--epochs) must be positive, got 0"),
        ({"learning_rate": -1}, "LEARNING_RATE (--learning-rate) must be positive, got -1.0"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_setting(script, tmp_path, override, message):
    module, args = script
    fails(module, args(tmp_path, "http://127.0.0.1:9/never-fetched.csv", **override), message)
    assert files_under(tmp_path) == []  # nothing downloaded, nothing written


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "DEVICE (--device) must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        pytest.param(
            "cuda",
            "torch sees no CUDA GPU here; use --device cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_a_device_that_does_not_exist_is_named(script, tmp_path, device, message):
    module, args = script
    fails(module, args(tmp_path, "http://127.0.0.1:9/never-fetched.csv", device=device), message)
    assert files_under(tmp_path) == []


def test_distilbert_specific_settings_are_checked(tmp_path, tiny_model):
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    fails(td, distilbert_args(tmp_path, "x", precision="fp8"), "PRECISION (--precision) must be auto, bf16, fp16")
    fails(
        td,
        distilbert_args(tmp_path, csv.as_uri(), tiny_model, max_length=1000),
        "MAX_LENGTH (--max-length) is 1000",
        "reads at most 128 tokens",
    )
    for length, truncation in [(1, "head"), (2, "head"), (1, "head+tail")]:  # too short for a token: refused up
        fails(
            td,
            distilbert_args(tmp_path, csv.as_uri(), tiny_model, max_length=length, truncation=truncation),
            f"MAX_LENGTH (--max-length) must be at least 3 ([CLS], a token, [SEP]), got {length}",
        )  # not HEAD_TOKENS
    assert not (tmp_path / "out").exists()


def test_a_folder_setting_that_is_a_file_is_one_line_and_creates_nothing(script, tmp_path):
    module, args = script
    (tmp_path / "notes.txt").write_text("mine")
    fails(
        module,
        args(tmp_path, "unused", out_dir=tmp_path / "notes.txt"),
        f"OUT_DIR (--out-dir) {tmp_path / 'notes.txt'} is a file; give a folder",
    )
    fails(
        module,
        args(tmp_path, "unused", data_dir=tmp_path / "notes.txt" / "data"),
        f"DATA_DIR (--data-dir) {tmp_path / 'notes.txt' / 'data'} lies under {tmp_path / 'notes.txt'}, which is a file",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no empty OUT_DIR left behind


def test_a_run_never_touches_files_it_did_not_write(tmp_path):
    """The user's .NAME.DIGITS.tmp and .old files in OUT_DIR and DATA_DIR: deleted or renamed by the start-up clean-up
    before."""
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    for folder in (tmp_path / "out", tmp_path / "data"):
        folder.mkdir()
        (folder / ".notes.2024.tmp").write_text("my notes")
        (folder / ".photos.1999.old").mkdir()
        (folder / ".photos.1999.old" / "summer.jpg").write_text("a photo")
        (folder / ".thesis.12345.old").write_text("chapter 1")
    tl.main(lstm_args(tmp_path, csv.as_uri(), epochs=1))
    for folder in (tmp_path / "out", tmp_path / "data"):
        assert (folder / ".notes.2024.tmp").read_text() == "my notes" and not (folder / "thesis").exists()
        assert (folder / ".photos.1999.old" / "summer.jpg").read_text() == "a photo"
        assert (folder / ".thesis.12345.old").read_text() == "chapter 1"


def test_a_redirect_loop_is_one_line(script, tmp_path):
    import http.server
    import threading

    class Loop(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    module, args = script
    try:
        fails(
            module,
            args(tmp_path, f"http://127.0.0.1:{server.server_port}/movie_data.csv.gz"),
            "could not download",
            "redirect error that would lead to an infinite loop",
            "save it as",
        )
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_line_prints_one_error_line_and_exits_1(tmp_path):
    csv = write_csv(pd.DataFrame({"text": ["a"], "sentiment": [1]}), tmp_path / "reviews.csv")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train_lstm_baseline.py"),
            f"--data-url={csv.as_uri()}",
            f"--data-dir={tmp_path / 'data'}",
            f"--out-dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "has no review column" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------- caches
def test_a_damaged_token_cache_is_rebuilt(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = make_reviews(30)["review"].tolist()
    expected = td.cached_token_ids(texts, tokenizer, 64, tmp_path, "sha")
    [cache] = tmp_path.glob("tokens-*.pt")
    cache.write_bytes(cache.read_bytes()[:100])  # a half-written file from some other tool
    again = td.cached_token_ids(texts, tokenizer, 64, tmp_path, "sha")
    assert all(torch.equal(a, b) for a, b in zip(expected[:2], again[:2], strict=True))
    assert torch.load(cache, weights_only=True)["key"]["data_sha256"] == "sha"
