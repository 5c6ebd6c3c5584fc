"""The PDF report: built from hand-made stores (every status; empty; partial) and from the
smoke suite; every page renders and is not blank, the headline's numbers are those of
bench.tidy.headline, the data and tables are written next to the PDF."""
import pytest

from bench.store import Store
from bench.tidy import frame, headline, per_norm
from helpers import add_network, add_result, bench, every_status_store, pages_render, pdf_text, report_pdf

pypdf = pytest.importorskip("pypdf")


def _fmt3(v):   # the headline's format of tightness: three significant digits, zeros kept
    s = f"{v:#.3g}"
    return s[:-1] if s.endswith(".") else s


def _headline_text(reader) -> str:
    """The headline pages' text: every page before the tightness-against-cost page."""
    out = []
    for page in reader.pages:
        t = page.extract_text()
        if "Tightness against cost" in t:
            break
        out.append(t)
    return "\n".join(out)


def _headline_numbers_are_the_frames(out, reader):
    h = headline(per_norm(frame(str(out))))   # one row per training method and query norm
    first = _headline_text(reader)
    best = h[h.best]
    assert len(best), h
    for r in best.itertuples():
        assert _fmt3(r.tight_median) in first, (r, first)
        k = int(round(r.settled_share * r.applicable))
        assert f"{100 * r.settled_share:.0f}% settled ({k}/{r.applicable})" in first, (r, first)
        assert f"{r.verifier} is the cheapest verifier" in first.replace("\n", " ")
    return h


def _side_files(stem):
    data = stem.parent / (stem.name + "-data.csv")
    assert data.exists() and data.read_text().startswith("network,")
    for name in ("headline", "status", "audit"):
        tex = (stem.parent / f"{stem.name}-{name}.tex").read_text()
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex, name


@pytest.fixture(scope="module")
def every(tmp_path_factory):
    """The store with every status, and its report (built once)."""
    d = tmp_path_factory.mktemp("every")
    out = every_status_store(str(d / "o"))
    pdf = d / "r.pdf"
    return out, pdf, report_pdf(out, pdf)


@pytest.mark.slow
@pytest.mark.poppler
def test_every_status_pages_render(every, tmp_path):
    _, pdf, reader = every
    assert pages_render(pdf, tmp_path) == len(reader.pages)


def test_every_status(every, tmp_path):
    out, pdf, reader = every
    assert len(reader.pages) >= 8
    _side_files(pdf.parent / "r")
    import pandas as pd
    assert len(pd.read_csv(pdf.parent / "r-data.csv")) == len(frame(out))
    text = pdf_text(reader)
    for words in ("suite handmade", "lipbench 0.2.0", "torch 2.13.0+cpu", "python 3.11.7", "device cpu",
                  "Tightness against cost", "Cactus plot", "Scaling", "Anytime bounds", "Certified robust accuracy",
                  "Status of every result", "Audit: 2 UNSOUND", "no witness pair in the stats",
                  "below the sound lower bound 4 of lower", "not installed", "unsupported", "license limit", "oom 1",
                  "error 1"):
        assert words in text, words
    h = _headline_numbers_are_the_frames(out, reader)
    # an unsound verifier is never the highlighted one, however "tight" its wrong bound looks
    assert not h[(h.verifier == "test-unsound")].best.any()
    assert "UNSOUND" in _headline_text(reader)


def test_anytime_titles_print_absolute_bounds(every):
    text = pdf_text(every[2])
    assert "bab, p=inf: timeout after 10 s: upper 4.5, lower 2.8" in text
    assert "bab, p=2: exact 2 after 0.5 s" in text
    assert "Lipschitz bound (p=inf)" in text


@pytest.mark.slow
def test_empty_store_says_so(tmp_path):
    out = tmp_path / "o"
    Store(str(out)).close()
    reader = report_pdf(out, tmp_path / "r.pdf")
    assert "holds no results" in pdf_text(reader)
    assert len(reader.pages) == 1
    assert "\\toprule" in (tmp_path / "r-headline.tex").read_text()


@pytest.mark.slow
def test_trained_but_not_verified_and_no_lower_bounds(tmp_path):
    out = tmp_path / "o"
    s = Store(str(out))
    add_network(s, "net-a")
    s.close()
    text = pdf_text(report_pdf(out, tmp_path / "r.pdf"))
    assert "holds no results" in text and "1 network(s) trained, nothing verified" in text
    s = Store(str(out))
    add_result(s, "net-a", "trivial", "ok", 3.0, "2")
    s.close()
    text = pdf_text(report_pdf(out, tmp_path / "r2.pdf"))
    assert "No sound lower bound in this store" in text
    assert "Scaling page omitted: every network has width 8 and depth 1" in text
    assert "no lower bound" in text


def test_one_style_per_verifier():
    from reports.style import KNOWN, UNSOUND, style
    seen = {style(v) for v in KNOWN}
    assert len(seen) == len(KNOWN)                                  # distinct
    assert style("my-plugin") == style("my-plugin")                 # stable
    assert all(style(v)[0] != UNSOUND for v in list(KNOWN) + ["my-plugin", "x", "test-unsound"])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("smoke"))
    r = bench("run", "--suite", "smoke", "--out", out, "-j", "2", "--no-report")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
@pytest.mark.poppler
def test_smoke_report_pages_render(smoke, tmp_path):
    pdf = tmp_path / "smoke.pdf"
    reader = report_pdf(smoke, pdf)
    assert pages_render(pdf, tmp_path) == len(reader.pages)


@pytest.mark.slow
def test_smoke_report(smoke, tmp_path):
    pdf = tmp_path / "smoke.pdf"
    reader = report_pdf(smoke, pdf)
    _side_files(tmp_path / "smoke")
    _headline_numbers_are_the_frames(smoke, reader)
    text = pdf_text(reader)
    assert "suite smoke" in text and "Audit: clean" in text and "Certified robust accuracy" in text
    assert "Appendix" not in text   # the per-row appendix is the csv now


@pytest.mark.slow
def test_a_10000_row_store_reports_in_under_30_s(tmp_path):
    import time

    from reports import write_report
    from helpers import big_store
    out = big_store(str(tmp_path / "o"), 10_000)
    t0 = time.perf_counter()
    pdf = write_report(out, str(tmp_path / "r.pdf"))
    took = time.perf_counter() - t0
    assert took < 30, f"{took:.1f} s"
    assert len(pypdf.PdfReader(pdf).pages) >= 8
    assert "one row per training method" in pdf_text(pypdf.PdfReader(pdf))   # 250 networks: the status map groups
