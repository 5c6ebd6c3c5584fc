"""A store as one markdown table, network x query by verifier (the form of the tables in
docs/networks.md): each cell the bound with its time and, for an upper bound, its ratio to
the best sound lower bound of the query; a status in its place where the verifier gave no
bound (an anytime bound kept at a timeout is shown as ``timeout <= v``).

    python benchmarks/store_table.py OUT_DIR      (e.g. the results folder of --suite vnncomp)
"""
import sys

import bench


def cell(r) -> str:
    v, t, ratio = r.value, r.cost_s, r.tightness
    if v is None or v != v:
        return r.status.replace("not_installed", "not installed") if r.status != "unsupported" else "–"
    s = f"{v:.4g} ({t:.0f} s)" if t == t and t is not None else f"{v:.4g}"
    if r.status == "timeout":
        s = f"timeout <= {s}"
    if ratio is not None and ratio == ratio:
        s += f" ×{ratio:.3g}"
    return s


def main(out: str) -> None:
    df = bench.results(out)
    verifiers = [v for v in ("lower", "trivial", "lipsdp", "eclipse-fast", "eclipse", "eclipse-nn", "bab", "mip",
                             "lirpa") if v in set(df.verifier)] + sorted(set(df.verifier) - {
        "lower", "trivial", "lipsdp", "eclipse-fast", "eclipse", "eclipse-nn", "bab", "mip", "lirpa"})
    print("| network | query | " + " | ".join(verifiers) + " |")
    print("|---|---|" + "---|" * len(verifiers))
    df = df.assign(where=["global" if d == "global" else "box" for d in df.domain])
    for (net, p, where), g in df.groupby(["network", "p", "where"], sort=True):
        by = {r.verifier: r for r in g.itertuples()}
        name = net.rsplit("-", 1)[0]
        print(f"| {name} | p={p} {where} | " + " | ".join(cell(by[v]) if v in by else "" for v in verifiers) + " |")
    counts = df.status.value_counts()
    print(f"\nOf {len(df)} results: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")


if __name__ == "__main__":
    main(sys.argv[1])
