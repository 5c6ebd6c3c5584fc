"""The page next to the published state of the art: the published numbers are data
(reports/published/), read and validated by reports.literature.load_published; the page exists
only for a store with CIFAR networks certified at p = 2, and its table holds both the
measured rows (from the store's certified table) and the reported ones, each marked."""
import os

import pandas as pd
import pytest

from bench.api import UserError
from bench.store import Store
from reports import literature, sota
from reports.style import fmt_eps
from helpers import CIFAR_EPS, cifar_store, pages_render, pdf_text, report_pdf

pypdf = pytest.importorskip("pypdf")

SOURCES = ("key,authors,title,venue,year,arxiv,note\n"
           "p24,\"A. One, B. Two, C. Three\",\"A title, with a comma\",CVPR,2024,2311.16833,their final statistics\n")
HEADER = "method,dataset,norm,eps,clean_pct,certified_pct,model,parameters,budget,source\n"


def _folder(tmp_path, results, sources=SOURCES):
    d = tmp_path / "pub"
    d.mkdir(exist_ok=True)
    (d / "sources.csv").write_text(sources)
    (d / "cifar10.csv").write_text(results)
    return str(d)


# ---- the loader

def test_the_shipped_numbers_load_with_their_sources():
    rows = literature.load_published()
    assert rows, "reports/published/ holds no result"
    for r in rows:
        assert r.source.title and r.source.authors and 2000 < r.source.year < 2100, r
        assert r.p == "2" and r.dataset == "CIFAR-10" and sota.eps_column(r.eps, literature.EPS_GRID) is not None, r
        assert 0 <= r.certified_pct <= r.clean_pct <= 100, r
        assert r.parameters is None or r.parameters > 0
    # every row is its own result (the loader refuses a repeated one), and every paper is cited
    assert len({(r.method, r.model, r.source.key) for r in rows}) == len(rows)
    bounds = literature.load_lipschitz()
    assert bounds, "reports/published/ holds no Lipschitz bound"
    for r in bounds:
        assert r.p in ("2", "inf") and r.bound > 0 and 0 < r.clean_pct <= 100, r
        assert r.kind in literature.BOUND_KINDS and r.input_scaling in literature.INPUT_SCALINGS, r
        assert r.source.arxiv, r     # every source has an arXiv identifier checked against its abstract page
    assert len({(r.method, r.model, r.source.key) for r in bounds}) == len(bounds)
    assert ({r.source.key for r in rows} | {r.source.key for r in bounds}
            == set(literature.load_sources(os.path.join(literature.PUBLISHED_DIR, "sources.csv"))))


def test_a_good_file(tmp_path):
    folder = _folder(tmp_path, "# a comment line\n" + HEADER + "\n"
                     "AOL,CIFAR-10,l2,36/255,73.4,61.0,ConvNetM,,24 h,p24\n"
                     "X,CIFAR-10,l2,0.5,50,20.5,Big,1234567,,p24\n")
    a, b = literature.load_published(folder)
    assert (a.method, a.p, a.clean_pct, a.certified_pct, a.parameters, a.budget) == ("AOL", "2", 73.4, 61.0, None,
                                                                                     "24 h")
    assert a.eps == pytest.approx(36 / 255) and a.eps_text == "36/255" and a.where == "cifar10.csv, line 4"
    assert (b.eps, b.parameters, b.budget, b.where) == (0.5, 1234567, "", "cifar10.csv, line 5")
    assert a.source.title == "A title, with a comma" and a.source.arxiv == "2311.16833"
    assert a.source.cite() == "One et al. 2024" and "arXiv 2311.16833" in a.source.reference()


@pytest.mark.parametrize("line,words", [
    ("AOL,CIFAR-10,l2,36/255,seventy,61.0,ConvNetM,,24 h,p24", "clean_pct 'seventy' is not a number"),
    ("AOL,CIFAR-10,l2,36/255,73.4,61.0,ConvNetM,,24 h,nobody", "source 'nobody' is not a key of sources.csv"),
    ("AOL,CIFAR-10,l2,36/255,61.0,73.4,ConvNetM,,24 h,p24", "is above clean_pct"),
    ("AOL,CIFAR-10,l2,36/0,73.4,61.0,ConvNetM,,24 h,p24", "eps '36/0' is not a radius"),
    ("AOL,CIFAR-10,l2,-1,73.4,61.0,ConvNetM,,24 h,p24", "not a positive, finite radius"),
    ("AOL,CIFAR-10,l7,36/255,73.4,61.0,ConvNetM,,24 h,p24", "unknown norm 'l7'"),
    ("AOL,MNIST,l2,36/255,73.4,61.0,ConvNetM,,24 h,p24", "unknown data set 'MNIST'"),
    ("AOL,CIFAR-10,l2,36/255,73.4,61.0,ConvNetM,about 1M,24 h,p24", "parameters 'about 1M' is not a whole number"),
    ("AOL,CIFAR-10,l2,36/255,173.4,61.0,ConvNetM,,24 h,p24", "clean_pct 173.4 is outside [0, 100]"),
    ("AOL,CIFAR-10,l2,36/255,73.4,61.0,ConvNetM,24 h,p24", "9 cells, the header has 10"),
    (",CIFAR-10,l2,36/255,73.4,61.0,ConvNetM,,24 h,p24", "method is empty"),
    ("AOL,CIFAR-10,l2,36/255,73.4,61.0,ConvNetM,,24 h,p24", "the same result as line 3"),
])
def test_a_malformed_results_file_is_one_line_naming_the_line(tmp_path, line, words):
    folder = _folder(tmp_path, HEADER + "# a comment\nAOL,CIFAR-10,l2,36/255,73.4,61.0,ConvNetM,,24 h,p24\n"
                     + line + "\n")
    with pytest.raises(UserError) as e:
        literature.load_published(folder)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(os.path.join(folder, "cifar10.csv") + ", line 4: "), msg
    assert words in msg, msg


@pytest.mark.parametrize("sources,where,words", [
    ("key,authors,title\n", "line 1", "the header must be key,authors,title,venue,year,arxiv,note"),
    (SOURCES + "p24,X,Y,Z,2024,,\n", "line 3", "source 'p24' is named twice"),
    (SOURCES + "q,X,Y,Z,2024,arXiv:1234,\n", "line 3", "arxiv 'arXiv:1234' is not an arXiv identifier"),
    (SOURCES + "q,X,Y,Z,next year,,\n", "line 3", "year 'next year' is not a number"),
    ("# only a comment\n", None, "no header line"),
])
def test_a_malformed_sources_file_is_one_line_naming_the_line(tmp_path, sources, where, words):
    folder = _folder(tmp_path, HEADER, sources)
    with pytest.raises(UserError) as e:
        literature.load_published(folder)
    msg = str(e.value)
    assert "\n" not in msg and words in msg, msg
    if where:
        assert f"sources.csv, {where}: " in msg, msg


def test_a_stored_eps_is_matched_with_a_tolerance():
    assert sota.eps_column(0.1411764705882353, literature.EPS_GRID) == 0
    assert sota.eps_column(108 / 255 + 1e-9, literature.EPS_GRID) == 2
    assert sota.eps_column(0.141, literature.EPS_GRID) is None
    assert [fmt_eps(e) for e in CIFAR_EPS] == ["36/255", "72/255", "108/255"]
    assert fmt_eps(0.5) == "0.5"


# ---- the page

@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    d = tmp_path_factory.mktemp("cifar")
    out = cifar_store(str(d / "o"), str(d))
    pdf = d / "r.pdf"
    return out, pdf, report_pdf(out, pdf)


def _expected_measured(out):
    """From the store itself: per configuration (here: per trainer), the verifier with the
    highest mean certified accuracy at 36/255, its means (in %) at each radius."""
    s = Store(out, create=False)
    try:
        c = pd.DataFrame(s.certified())
        nets = {n["id"]: dict(n) for n in s.networks()}
    finally:
        s.close()
    c["trainer"] = c.network.map(lambda n: nets[n]["trainer"])
    c["col"] = c.eps.map(lambda e: sota.eps_column(e, literature.EPS_GRID))
    exp = {}
    for trainer, g in c.groupby("trainer"):
        at36 = g[g.col == 0].groupby("verifier").certified_acc.mean()
        v = at36.idxmax()
        gv = g[g.verifier == v]
        exp[trainer] = {"verifier": v, "clean": 100 * gv.drop_duplicates("network").clean_acc.mean(),
                        "cert": [100 * gv[gv.col == j].certified_acc.mean() if (gv.col == j).any() else None
                                 for j in range(3)],
                        "networks": gv.network.nunique()}
    return exp, nets


@pytest.mark.slow
@pytest.mark.poppler
def test_the_published_report_pages_render(cifar, tmp_path):
    _, pdf, reader = cifar
    assert pages_render(pdf, tmp_path) == len(reader.pages)


def test_the_page_sets_measured_next_to_reported(cifar, tmp_path):
    out, pdf, reader = cifar
    pages = [i for i, p in enumerate(reader.pages) if "Next to the published state of the art" in p.extract_text()]
    assert len(pages) == 1, pages
    text = pdf_text(reader, pages[0])
    for words in ("measured", "reported", "CIFAR-10 (JPEG copy)", "at 36/255", "at 72/255",
                  "at 108/255", "Prach et al. 2024 [1]", "1-Lipschitz Layers Compared", "arXiv 2311.16833",
                  "clean accuracy (%)"):
        assert words in text, words

    table = pd.read_csv(pdf.parent / "r-published.csv")
    published = literature.load_published()
    rep = table[table["mark"] == "reported"]
    assert len(rep) == len(published)
    for r in published:   # each published row as its file says, with its source
        row = rep[(rep.method == r.method) & (rep.model == r.model)].iloc[0]
        assert (row.clean_pct, row["certified_pct_36/255"], row.dataset) == (r.clean_pct, r.certified_pct, "CIFAR-10")
        assert r.source.cite() in row.source
        assert r.method in text and f"{r.certified_pct:.1f}" in text

    exp, nets = _expected_measured(out)
    mea = table[table["mark"] == "measured"]
    assert len(mea) == len(exp) == 2
    for trainer, e in exp.items():
        row = mea[mea.configuration.str.contains(rf" {trainer}(?: |$)")].iloc[0]
        assert row.dataset.startswith("CIFAR-10 (JPEG copy)") and row.verifier == e["verifier"]
        assert row.clean_pct == pytest.approx(e["clean"], abs=1e-3)
        for j, col in enumerate(["certified_pct_36/255", "certified_pct_72/255", "certified_pct_108/255"]):
            if e["cert"][j] is None:
                assert pd.isna(row[col]), (trainer, col)
            else:
                assert row[col] == pytest.approx(e["cert"][j], abs=1e-3), (trainer, col)
        assert f"{e['networks']} network(s)" in row.source
    # the network's size: recorded at training time, else counted from the saved network
    import json

    from bench.network import load, parameter_count
    tb = mea[mea.configuration.str.contains("tb-penalty")].iloc[0]
    assert tb.parameters == json.loads(nets["cifar-tb-s0"]["metrics"])["parameters"]
    std = mea[mea.configuration.str.contains("standard")].iloc[0]
    assert "parameters" not in json.loads(nets["cifar-std"]["metrics"])
    assert std.parameters == parameter_count(load(nets["cifar-std"]["path"])[0])
    # the training budget: the recorded epochs and time
    assert "30 epochs" in tb.budget and "mean of 2 seeds" in tb.budget and "5 epochs, 95 s on cpu" == std.budget
    assert "1000 test images" in tb.dataset
    assert "\\toprule" in (pdf.parent / "r-published.tex").read_text()


@pytest.mark.slow
def test_absent_without_cifar_networks(tmp_path):
    """A store whose certified accuracy is not on CIFAR (synthetic data, as digits) has no such page."""
    from helpers import every_status_store
    out = every_status_store(str(tmp_path / "o"))
    reader = report_pdf(out, tmp_path / "r.pdf")
    text = pdf_text(reader)
    assert "Next to the published state of the art" not in text
    assert "No CIFAR-10 network with certified accuracy for p = 2" in text
    assert not (tmp_path / "r-published.csv").exists()


def test_no_page_and_no_file_read_without_cifar(tmp_path):
    """Without CIFAR networks the published numbers are not even read: a broken data
    folder cannot break the report of a digits store."""
    broken = _folder(tmp_path, "not,a,valid,header\n")
    with pytest.raises(UserError):
        literature.load_published(broken)
    assert sota.comparison(pd.DataFrame(), [], [], folder=broken) is None


def test_a_broken_data_file_fails_a_cifar_report_in_one_line(tmp_path):
    out = cifar_store(str(tmp_path / "o"))
    broken = _folder(tmp_path, HEADER + "AOL,CIFAR-10,l2,36/255,73.4,sixty,ConvNetM,,24 h,p24\n")
    from bench.tidy import frame, networks_frame
    s = Store(out, create=False)
    try:
        certified, nets = s.certified(), networks_frame(s.networks())
    finally:
        s.close()
    with pytest.raises(UserError, match=r"cifar10.csv, line 2: certified_pct 'sixty' is not a number"):
        sota.comparison(frame(out), certified, nets, folder=broken)


# ---- published Lipschitz bounds: the same loader, a file's kind by its header

LIP_HEADER = "method,dataset,norm,lipschitz_bound,bound_kind,input_scaling,clean_pct,model,parameters,source\n"
LIP_ROW = "LBDN,MNIST,l2,5,by construction,pixels/255,97.24,MLP 784-64-64-10,,p24\n"


def _lip_folder(tmp_path, rows, results=HEADER):
    folder = _folder(tmp_path, results)
    (tmp_path / "pub" / "lipschitz_mnist.csv").write_text("# comment\n" + LIP_HEADER + rows)
    return folder


def test_a_good_bounds_file_next_to_a_results_file(tmp_path):
    folder = _lip_folder(tmp_path, LIP_ROW + "HKR,MNIST,linf,1.5,certified upper,standardised,96.06,CNN,27920,p24\n",
                         HEADER + "AOL,CIFAR-10,l2,36/255,73.4,61.0,ConvNetM,,24 h,p24\n")
    both = literature.load_folder(folder)
    assert [r.method for r in both["certified"]] == ["AOL"] == [r.method for r in literature.load_published(folder)]
    a, b = literature.load_lipschitz(folder)
    assert (a.method, a.p, a.bound, a.kind, a.input_scaling, a.clean_pct, a.parameters, a.where) == \
        ("LBDN", "2", 5.0, "by construction", "pixels/255", 97.24, None, "lipschitz_mnist.csv, line 3")
    assert (b.p, b.bound, b.kind, b.input_scaling, b.parameters) == ("inf", 1.5, "certified upper", "standardised",
                                                                     27920)
    assert a.source.cite() == "One et al. 2024"


@pytest.mark.parametrize("line,words", [
    ("LBDN,MNIST,l2,five,by construction,pixels/255,97.24,MLP,,p24", "lipschitz_bound 'five' is not a number"),
    ("LBDN,MNIST,l2,0,by construction,pixels/255,97.24,MLP,,p24", "lipschitz_bound 0 is not a positive, finite"),
    ("LBDN,MNIST,l2,inf,by construction,pixels/255,97.24,MLP,,p24", "lipschitz_bound inf is not a positive, finite"),
    ("LBDN,MNIST,l2,5,guessed,pixels/255,97.24,MLP,,p24", "unknown bound_kind 'guessed'"),
    ("LBDN,MNIST,l2,5,by construction,[0 1],97.24,MLP,,p24", "unknown input_scaling '[0 1]'"),
    ("LBDN,CIFAR-10,l2,5,by construction,pixels/255,97.24,MLP,,p24", "unknown data set 'CIFAR-10'"),
    ("LBDN,MNIST,l3,5,by construction,pixels/255,97.24,MLP,,p24", "unknown norm 'l3'"),
    ("LBDN,MNIST,l2,5,by construction,pixels/255,107,MLP,,p24", "clean_pct 107 is outside [0, 100]"),
    ("LBDN,MNIST,l2,5,by construction,pixels/255,97.24,MLP,many,p24", "parameters 'many' is not a whole number"),
    ("LBDN,MNIST,l2,5,by construction,pixels/255,97.24,MLP,,nobody", "source 'nobody' is not a key of sources.csv"),
    ("LBDN,MNIST,l2,5,by construction,pixels/255,97.24,MLP,p24", "9 cells, the header has 10"),
    ("LBDN,MNIST,l2,5,,pixels/255,97.24,MLP,,p24", "bound_kind is empty"),
    ("LBDN,MNIST,l2,6,by construction,pixels/255,97.0,MLP 784-64-64-10,,p24", "the same result as line 3"),
])
def test_a_malformed_bounds_file_is_one_line_naming_the_line(tmp_path, line, words):
    folder = _lip_folder(tmp_path, LIP_ROW + line + "\n")
    for load in (literature.load_lipschitz, literature.load_published):    # every file is validated, whichever is asked for
        with pytest.raises(UserError) as e:
            load(folder)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(os.path.join(folder, "lipschitz_mnist.csv") + ", line 4: "), msg
        assert words in msg, msg


def test_a_file_of_no_known_kind_names_both_headers(tmp_path):
    folder = _folder(tmp_path, "# c\nmethod,dataset,norm,bound\n")
    with pytest.raises(UserError) as e:
        literature.load_folder(folder)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(os.path.join(folder, "cifar10.csv") + ", line 2: the header must be ")
    assert "(certified accuracy) or method,dataset,norm,lipschitz_bound" in msg
    assert "(Lipschitz bounds), not method,dataset,norm,bound" in msg
