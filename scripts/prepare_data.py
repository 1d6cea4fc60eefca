#!/usr/bin/env python3
"""Rebuild the small real-sequence data sets under data/ from Debian packages.

Requirements
------------
* Debian/Ubuntu tools: ``apt-get`` (for ``apt-get download``; run ``apt-get update``
  once first) and ``dpkg-deb``.  Nothing is installed: the .deb files are only unpacked.
  Debian (bookworm) packages used, with the versions this script was last run against:

      r-cran-seqinr      4.2-23-1        E. coli m16j, C. trachomatis FASTA + GenBank
      r-bioc-biostrings  2.66.0-1        S. cerevisiae chromosome I
      hmmer-examples     3.3.2+dfsg-1    human chr1 fragment
      r-cran-mlbench     2.1-3-1         StatLog DNA (splice junctions)
      r-cran-kernlab     0.9-32-1        UCI E. coli promoters
      infernal           1.1.4-1         tRNA1415G.sto (tRNAs with secondary structure)
      bible-kjv          4.38            the `bible` reader (run from the unpacked package)
      bible-kjv-text     4.38            King James Version text (English prose, Genesis)

* Python >= 3.11 with (pip):  ``pip install rdata viennarna``
  (tested with rdata 1.1.0, viennarna 2.8.0).

Usage
-----
    python scripts/prepare_data.py                 # downloads the .deb files to a temp dir
    python scripts/prepare_data.py --debs DIR      # use .deb files already in DIR
    python scripts/prepare_data.py --out data      # output directory (default: data/)

The outputs are deterministic: gzip members carry mtime=0 and no file name, rows are
written in source order, and floats are formatted with fixed precision.  A
``SHA256SUMS`` file is written next to the outputs so a rebuild can be compared.
See data/README.md for a description of every file.
"""
from __future__ import annotations

import argparse
import csv
import glob
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections import Counter

PACKAGES = {
    "r-cran-seqinr": "4.2-23-1",
    "r-bioc-biostrings": "2.66.0-1",
    "hmmer-examples": "3.3.2+dfsg-1",
    "r-cran-mlbench": "2.1-3-1",
    "r-cran-kernlab": "0.9-32-1",
    "infernal": "1.1.4-1",
    "bible-kjv": "4.38",
    "bible-kjv-text": "4.38",
}
RLIB = "usr/lib/R/site-library"


# --------------------------------------------------------------------------- helpers
def log(*a):
    print(*a, flush=True)


def get_debs(debdir: str | None, workdir: str) -> dict[str, str]:
    """Return {package: extracted root dir}.  Downloads with apt-get when needed."""
    if debdir is None:
        debdir = os.path.join(workdir, "debs")
        os.makedirs(debdir, exist_ok=True)
        log(f"apt-get download {' '.join(PACKAGES)}  (into {debdir})")
        r = subprocess.run(["apt-get", "download", *PACKAGES], cwd=debdir)
        if r.returncode != 0:
            sys.exit("apt-get download failed (run `apt-get update` first?)")
    roots = {}
    for pkg, want in PACKAGES.items():
        found = sorted(glob.glob(os.path.join(debdir, f"{pkg}_*.deb")))
        if not found:
            sys.exit(f"missing {pkg}_*.deb in {debdir}")
        deb = found[-1]
        ver = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True,
                             text=True, check=True).stdout.strip()
        note = "" if ver == want else f"   WARNING: expected {want}; outputs may differ"
        log(f"  {pkg} {ver}{note}")
        root = os.path.join(workdir, "x", pkg)
        os.makedirs(root, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
        roots[pkg] = root
    return roots


def read_rda(path: str) -> dict:
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown encoding. Assumed ASCII."
        return rdata.read_rda(path)


class Det:
    """Deterministic writer for plain or gzip text files."""

    def __init__(self, path: str):
        self.path = path
        self.buf = io.StringIO()

    def __enter__(self):
        return self.buf

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        data = self.buf.getvalue().encode("utf-8")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "wb") as fh:
            if self.path.endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=9,
                                   mtime=0) as gz:
                    gz.write(data)
            else:
                fh.write(data)
        return False


def write_csv(path: str, header: list[str], rows: list[list]) -> None:
    with Det(path) as buf:
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    log(f"  wrote {path}: {len(rows)} rows, {os.path.getsize(path)} bytes")


def clean_dna(seq: str) -> tuple[str, int]:
    """Uppercase; U->T; anything not ACGT becomes N.  Returns (seq, #changed to N)."""
    s = seq.upper().replace("U", "T")
    out = re.sub(r"[^ACGT]", "N", s)
    return out, sum(1 for c in s if c not in "ACGT")


def write_fasta(path: str, records: list[tuple[str, str, str]], width: int = 60) -> None:
    with Det(path) as buf:
        for rid, desc, seq in records:
            buf.write(f">{rid} {desc}\n")
            for i in range(0, len(seq), width):
                buf.write(seq[i:i + width] + "\n")
    total = sum(len(s) for _, _, s in records)
    log(f"  wrote {path}: {len(records)} record(s), {total} bp, {os.path.getsize(path)} bytes")


def read_fasta(text: str) -> list[tuple[str, str]]:
    recs, name, parts = [], None, []
    for line in text.splitlines():
        if line.startswith(">"):
            if name is not None:
                recs.append((name, "".join(parts)))
            name, parts = line[1:].strip(), []
        elif line.strip():
            parts.append(line.strip())
    if name is not None:
        recs.append((name, "".join(parts)))
    return recs


COMP = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def revcomp(s: str) -> str:
    return s.translate(COMP)[::-1]


# bacterial, archaeal and plant plastid code (NCBI translation table 11)
_B = "TCAG"
_AA11 = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON11 = {a + b + c: _AA11[16 * i + 4 * j + k]
           for i, a in enumerate(_B) for j, b in enumerate(_B) for k, c in enumerate(_B)}
STARTS11 = {"TTG", "CTG", "ATT", "ATC", "ATA", "ATG", "GTG"}


def translate11(cds: str) -> str:
    aa = [CODON11.get(cds[i:i + 3], "X") for i in range(0, len(cds) - len(cds) % 3, 3)]
    if aa and cds[:3] in STARTS11:
        aa[0] = "M"  # alternative initiation codons are read as Met
    return "".join(aa)


# --------------------------------------------------------------------------- 1 genomes
def build_genomes(roots, out) -> dict:
    log("[1] genomes")
    stats = {}
    seqinr = os.path.join(roots["r-cran-seqinr"], RLIB, "seqinr")

    m16j = str(read_rda(os.path.join(seqinr, "data/m16j.RData"))["m16j"][0])
    ec, nn = clean_dna(m16j)
    write_fasta(os.path.join(out, "genomes/ecoli_k12_mg1655.fa.gz"),
                [("ecoli_K12_MG1655_m16j",
                  f"Escherichia coli K-12 MG1655 chromosome fragment (from U00096), "
                  f"{len(ec)} bp [seqinr m16j]", ec)])
    stats["ecoli"] = (len(ec), nn)

    with gzip.open(os.path.join(seqinr, "sequences/ct.fasta.gz"), "rt") as fh:
        (name, ct_raw), = read_fasta(fh.read())
    ct, nn = clean_dna(ct_raw)
    write_fasta(os.path.join(out, "genomes/chlamydia_trachomatis.fa.gz"),
                [("Ctrachomatis_D_UW3CX",
                  f"Chlamydia trachomatis D/UW-3/CX complete genome (GenBank AE001273, "
                  f"LOCUS CHLTCG), circular, {len(ct)} bp [seqinr ct.fasta.gz]", ct)])
    stats["chlamydia"] = (len(ct), nn)

    bios = os.path.join(roots["r-bioc-biostrings"], RLIB, "Biostrings")
    y = str(read_rda(os.path.join(bios, "data/yeastSEQCHR1.rda"))["yeastSEQCHR1"][0])
    y, nn = clean_dna(y)
    write_fasta(os.path.join(out, "genomes/yeast_chrI.fa.gz"),
                [("Scerevisiae_chrI",
                  f"Saccharomyces cerevisiae S288C chromosome I (SGD, 2003), {len(y)} bp "
                  f"[Biostrings yeastSEQCHR1]", y)])
    stats["yeast"] = (len(y), nn)

    hpath = os.path.join(roots["hmmer-examples"], "usr/share/doc/hmmer/examples/tutorial/dna_target.fa")
    with open(hpath) as fh:
        (hname, h_raw), = read_fasta(fh.read())
    h, nn = clean_dna(h_raw)
    write_fasta(os.path.join(out, "genomes/human_chr1_fragment.fa.gz"),
                [("human_chr1_frag",
                  f"Homo sapiens chromosome 1 fragment, {len(h)} bp "
                  f"[HMMER tutorial dna_target.fa, id {hname}]", h)])
    stats["human"] = (len(h), nn)
    log(f"  total {sum(v[0] for v in stats.values())} bp; non-ACGT->N per genome: "
        + ", ".join(f"{k}={v[1]}" for k, v in stats.items()))
    return {"ct_genome": ct, "stats": stats}


# --------------------------------------------------------------------------- 2 splice
def build_splice(roots, out) -> dict:
    log("[2] StatLog splice junctions")
    df = read_rda(os.path.join(roots["r-cran-mlbench"], RLIB, "mlbench/data/DNA.rda"))["DNA"]
    assert df.shape == (3186, 181), df.shape
    code = {"100": "A", "010": "C", "001": "G", "000": "T"}
    bits = df[[f"V{i}" for i in range(1, 181)]].astype(str).values
    labels = df["Class"].astype(str).tolist()
    rows, bad = [], 0
    for r in range(len(df)):
        b = bits[r]
        seq = []
        for p in range(60):
            key = b[3 * p] + b[3 * p + 1] + b[3 * p + 2]
            if key not in code:
                bad += 1
            seq.append(code.get(key, "N"))
        split = "train" if r < 2000 else "test"
        rows.append([f"dna{r + 1:04d}", "".join(seq), labels[r], split])
    assert bad == 0, f"{bad} invalid indicator triples"
    write_csv(os.path.join(out, "splice/splice.csv"), ["id", "sequence", "label", "split"], rows)
    cnt = Counter(r[2] for r in rows)
    cnt_split = Counter((r[3], r[2]) for r in rows)
    ei = [r[1] for r in rows if r[2] == "ei"]
    ie = [r[1] for r in rows if r[2] == "ie"]
    nn = [r[1] for r in rows if r[2] == "n"]
    f_ei = sum(s[30:32] == "GT" for s in ei) / len(ei)
    f_ie = sum(s[28:30] == "AG" for s in ie) / len(ie)
    f_n_gt = sum(s[30:32] == "GT" for s in nn) / len(nn)
    f_n_ag = sum(s[28:30] == "AG" for s in nn) / len(nn)
    log(f"  classes {dict(cnt)}; split {dict(sorted(cnt_split.items()))}")
    log(f"  sanity: ei with GT at 31-32: {f_ei:.4f}; ie with AG at 29-30: {f_ie:.4f}; "
        f"n with GT@31-32: {f_n_gt:.4f}, AG@29-30: {f_n_ag:.4f}")
    assert f_ei > 0.95 and f_ie > 0.95
    return {"counts": cnt, "f_ei": f_ei, "f_ie": f_ie}


# --------------------------------------------------------------------------- 3 promoters
def build_promoters(roots, out) -> dict:
    log("[3] UCI E. coli promoters")
    df = read_rda(os.path.join(roots["r-cran-kernlab"], RLIB, "kernlab/data/promotergene.rda"))["promotergene"]
    assert df.shape == (106, 58), df.shape
    cols = [f"V{i}" for i in range(2, 59)]
    vals = df[cols].astype(str).values
    lab = df["Class"].astype(str).tolist()
    rows = []
    for r in range(len(df)):
        seq, nn = clean_dna("".join(vals[r]))
        assert len(seq) == 57 and nn == 0
        rows.append([f"prom{r + 1:03d}", seq, lab[r]])
    write_csv(os.path.join(out, "promoters/promoters.csv"), ["id", "sequence", "label"], rows)
    cnt = Counter(lab)
    log(f"  labels {dict(cnt)}")
    return {"counts": cnt}


# --------------------------------------------------------------------------- 4 chlamydia CDS
def parse_genbank_features(text: str):
    """Minimal GenBank parser: returns (features, origin_sequence).

    Each feature is (key, location_string, {qualifier: value}) with multi-line values
    joined (translation without spaces, other text with single spaces)."""
    lines = text.splitlines()
    i = 0
    while not lines[i].startswith("FEATURES"):
        i += 1
    i += 1
    feats = []
    cur = None
    qual = None
    while not lines[i].startswith(("ORIGIN", "BASE COUNT", "CONTIG")):
        line = lines[i]
        i += 1
        if line[5:6] != " " and line[:5] == "     ":  # new feature key at column 6
            key, loc = line[5:21].strip(), line[21:].strip()
            cur = [key, loc, {}]
            feats.append(cur)
            qual = None
            continue
        body = line[21:]
        if body.startswith("/"):
            m = re.match(r"/([^=]+)(?:=(.*))?$", body)
            qual = m.group(1)
            cur[2][qual] = m.group(2) if m.group(2) is not None else ""
        elif qual is None:  # location continues
            cur[1] += body.strip()
        else:
            sep = "" if qual == "translation" else " "
            cur[2][qual] += sep + body.strip()
    for f in feats:
        for k, v in f[2].items():
            if len(v) >= 2 and v.startswith('"') and v.endswith('"'):
                f[2][k] = v[1:-1]
    while not lines[i].startswith("ORIGIN"):
        i += 1
    seq = []
    for line in lines[i + 1:]:
        if line.startswith("//"):
            break
        seq.append(re.sub(r"[^A-Za-z]", "", line))
    return feats, "".join(seq).upper()


def parse_location(loc: str):
    """-> (list of (start, end) 1-based inclusive in transcript order, strand, partial5, partial3)."""
    strand = 1
    s = loc
    if s.startswith("complement(") and s.endswith(")"):
        strand, s = -1, s[len("complement("):-1]
    if s.startswith("join(") and s.endswith(")"):
        s = s[len("join("):-1]
    segs, p_lt, p_gt = [], False, False
    for part in s.split(","):
        m = re.fullmatch(r"(<?)(\d+)\.\.(>?)(\d+)", part.strip())
        if not m:
            raise ValueError(f"unsupported location {loc}")
        p_lt |= bool(m.group(1))
        p_gt |= bool(m.group(3))
        segs.append((int(m.group(2)), int(m.group(4))))
    if strand == 1:
        return segs, strand, p_lt, p_gt
    return segs, strand, p_gt, p_lt  # on the minus strand '>' marks the 5' end


def build_cds(roots, out, ct_genome: str) -> dict:
    log("[4] C. trachomatis CDS")
    gbk = os.path.join(roots["r-cran-seqinr"], RLIB, "seqinr/sequences/ct.gbk.gz")
    with gzip.open(gbk, "rt") as fh:
        feats, gseq = parse_genbank_features(fh.read())
    assert gseq == ct_genome, "GenBank ORIGIN differs from ct.fasta.gz"
    recs = []
    for key, loc, q in feats:
        if key != "CDS":
            continue
        segs, strand, p5, p3 = parse_location(loc)
        nt = "".join(gseq[a - 1:b] for a, b in segs)
        if strand == -1:
            nt = revcomp(nt)  # complement(join(A,B)) = revcomp(A + B)
        gid = q.get("gene") or q.get("locus_tag")
        if not gid:  # e.g. the frame-shifted prfB: fall back on the GenBank protein id
            pid = [x for x in q.get("db_xref", "").split() if x.startswith("PID:")]
            gid = pid[0][4:] if pid else f"cds_{segs[0][0]}"
        recs.append(dict(id=gid, segs=segs, strand=strand, p5=p5, p3=p3, loc=loc, nt=nt, q=q))

    # A gene that crosses the origin of the circular genome is given as two partial CDS
    # features with the same /gene (CT875: 1041920..>1042519 and <1..1176).  Keep both rows
    # (coordinates stay within 1..genome length) but name them by part and check the
    # translation of the joined sequence.
    by_id = Counter(r["id"] for r in recs)
    joined = {}
    for gid, n in by_id.items():
        if n == 1:
            continue
        parts = [r for r in recs if r["id"] == gid]
        first = [r for r in parts if r["p3"] and not r["p5"]]
        last = [r for r in parts if r["p5"] and not r["p3"]]
        if n == 2 and len(first) == 1 and len(last) == 1:
            first[0]["id"], last[0]["id"] = f"{gid}_5p", f"{gid}_3p"
            joined[gid] = first[0]["nt"] + last[0]["nt"]
            first[0]["join"] = last[0]["join"] = gid
        else:
            for k, r in enumerate(parts, 1):
                r["id"] = f"{gid}_{k}"
    assert len({r["id"] for r in recs}) == len(recs)

    rows, n_match, mism = [], 0, []
    for r in recs:
        prot = r["q"].get("translation", "")
        nt = joined.get(r.get("join"), r["nt"])
        tr = translate11(nt)
        tr_core = tr[:-1] if tr.endswith("*") else tr
        ok = tr_core == prot
        n_match += ok
        if not ok:
            mism.append((r["id"], r["loc"], len(nt), len(tr_core), len(prot)))
        partial = ("5'" if r["p5"] else "") + ("3'" if r["p3"] else "")
        rows.append([r["id"], min(a for a, _ in r["segs"]), max(b for _, b in r["segs"]),
                     "+" if r["strand"] == 1 else "-", r["loc"], partial or "no",
                     r["q"].get("product", ""), "yes" if ok else "no", r["nt"], prot])
    if joined:
        log(f"  origin-spanning gene(s) split in two rows, checked joined: {sorted(joined)}")
    header = ["id", "start", "end", "strand", "location", "partial", "product",
              "translation_matches", "cds_sequence", "protein"]
    write_csv(os.path.join(out, "chlamydia/cds.csv.gz"), header, rows)
    log(f"  {len(rows)} CDS; translate(table 11) == /translation for {n_match}/{len(rows)}")
    for m in mism:
        log(f"    mismatch: {m}")
    return {"n": len(rows), "match": n_match, "mismatch": mism}


# --------------------------------------------------------------------------- 5 tRNA
def read_stockholm_ss(path: str):
    seqs, ss, order = {}, {}, []
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line or line.startswith("//") or line.startswith("# STOCKHOLM"):
                continue
            if line.startswith("#=GR"):
                _, sid, tag, val = line.split(None, 3)
                if tag == "SS":
                    ss[sid] = ss.get(sid, "") + val.strip()
                continue
            if line.startswith("#"):
                continue
            sid, val = line.split(None, 1)
            if sid not in seqs:
                order.append(sid)
                seqs[sid] = ""
            seqs[sid] += val.strip()
    return order, seqs, ss


def balanced(s: str) -> bool:
    depth = 0
    for c in s:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def build_trna(roots, out) -> dict:
    log("[5] tRNA secondary structure")
    path = os.path.join(roots["infernal"], "usr/share/doc/infernal/examples/testsuite/tRNA1415G.sto")
    order, seqs, ss = read_stockholm_ss(path)
    rows, n_bal, n_gap_brackets, n_n = [], 0, 0, 0
    for sid in order:
        aln, aln_ss = seqs[sid], ss[sid]
        assert len(aln) == len(aln_ss), sid
        s, t = [], []
        for c, k in zip(aln, aln_ss):
            if c in ".-_~":
                if k in "<>":
                    n_gap_brackets += 1
                continue
            s.append(c)
            t.append("(" if k == "<" else ")" if k == ">" else ".")
        seq, nn = clean_dna("".join(s))  # RNA written in the DNA alphabet: U -> T
        n_n += nn
        st = "".join(t)
        bal = balanced(st)
        n_bal += bal
        rows.append([sid, seq, st])
    write_csv(os.path.join(out, "trna/trna.csv.gz"), ["id", "sequence", "structure"], rows)
    lens = [len(r[1]) for r in rows]
    n_unique = len(set(r[1] for r in rows))
    paired = sum(r[2].count("(") * 2 for r in rows) / sum(lens)
    log(f"  {len(rows)} tRNAs, length {min(lens)}-{max(lens)} (mean {sum(lens)/len(lens):.1f}), "
        f"{n_unique} distinct sequences; balanced structures {n_bal}/{len(rows)}; "
        f"brackets on gap columns dropped: {n_gap_brackets}; non-ACGU -> N: {n_n}; "
        f"paired fraction {paired:.3f}")
    return {"rows": rows, "n_bal": n_bal, "n_unique": n_unique}


# --------------------------------------------------------------------------- 6 tRNA MFE
def build_mfe(out, trna_rows) -> dict:
    log("[6] tRNA minimum free energy (ViennaRNA)")
    import RNA

    rows, agree = [], 0
    for sid, seq, st in trna_rows:
        struct, mfe = RNA.fold(seq.replace("T", "U"))
        rows.append([sid, seq, f"{mfe:.2f}"])
        # exact agreement with the alignment structure, only reported in the log
        agree += struct == st
    write_csv(os.path.join(out, "trna/trna_mfe.csv.gz"), ["id", "sequence", "mfe_kcal_mol"], rows)
    v = [float(r[2]) for r in rows]
    mean = sum(v) / len(v)
    sd = (sum((x - mean) ** 2 for x in v) / (len(v) - 1)) ** 0.5
    log(f"  ViennaRNA {RNA.__version__}: MFE min {min(v):.2f} max {max(v):.2f} mean {mean:.2f} "
        f"sd {sd:.2f}; MFE structure identical to alignment structure for {agree}/{len(rows)}")
    return {"version": RNA.__version__}


# --------------------------------------------------------------------------- 7 English
def build_english(roots, out) -> dict:
    """Genesis (King James Version, public domain), one verse per row, as written."""
    log("[7] English prose: Genesis, KJV")
    reader = os.path.join(roots["bible-kjv"], "usr/bin/bible")
    data = os.path.join(roots["bible-kjv-text"], "usr/lib")
    text = subprocess.run([reader, "-p", data, "-l100000", "gen1:1-50:26"], capture_output=True,
                          text=True, check=True).stdout
    rows, chapter = [], None
    for line in text.splitlines():
        head = re.fullmatch(r"Genesis (\d+)", line.strip())
        if head:
            chapter = int(head.group(1))
            continue
        verse = re.fullmatch(r"\s*(\d+) (.+)", line)
        if verse:
            assert chapter is not None, line
            rows.append([f"Gen{chapter}:{verse.group(1)}", verse.group(2).strip()])
    assert len(rows) == 1533, len(rows)  # Genesis has 50 chapters, 1,533 verses
    write_csv(os.path.join(out, "english/genesis.csv.gz"), ["id", "sequence"], rows)
    chars = sum(len(r[1]) for r in rows)
    log(f"  {len(rows)} verses, {chars} characters")
    return {"rows": len(rows), "chars": chars}


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--debs", help="directory holding the .deb files (default: apt-get download)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    with tempfile.TemporaryDirectory(prefix="dnaflow-data-") as work:
        roots = get_debs(os.path.abspath(args.debs) if args.debs else None, work)
        g = build_genomes(roots, out)
        build_splice(roots, out)
        build_promoters(roots, out)
        build_cds(roots, out, g["ct_genome"])
        t = build_trna(roots, out)
        build_mfe(out, t["rows"])
        build_english(roots, out)
    files = sorted(
        os.path.relpath(os.path.join(d, f), out)
        for d, _, fs in os.walk(out) for f in fs
        if f.endswith((".gz", ".csv")))
    with open(os.path.join(out, "SHA256SUMS"), "w") as fh:
        for f in files:
            with open(os.path.join(out, f), "rb") as b:
                fh.write(f"{hashlib.sha256(b.read()).hexdigest()}  {f}\n")
    total = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    log(f"done: {len(files)} files, {total} bytes in {out} (checksums in SHA256SUMS)")


if __name__ == "__main__":
    main()
