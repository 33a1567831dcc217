"""How fast an index of a photo collection answers: a query over 100,000 embeddings, and a scan
for near duplicates.

  python bench/search_index.py [--rows=100000] [--dim=256] [--queries=20] [--duplicate_rows=20000]

Writes (in a temporary folder) an index in the real format (jclip/collection/index.py) of --rows
random unit embeddings of --dim, with a manifest of made-up paths, sizes and times. Then times a
query end to end as eval.py --images answers one once its query is embedded: open index.json,
memory-map the embeddings, score them in chunks, keep the top 10, read the hits' paths from the
manifest. The query is a random unit vector (embedding a text takes a model; the bench times the
index alone). Prints the first query with the index's files dropped from the page cache (as on a
first query after a reboot; Linux only), then the median of --queries queries with them cached,
each with its parts. Then a duplicate scan of the first --duplicate_rows rows at cosine
similarity >= --threshold, with --planted near copies hidden among them (each must be found).
Last, numpy's matmul speed: the machine's speed of the moment, to compare days by.
"""

import os
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags

from jclip.cli import run_reporting_user_errors
from jclip.collection.clean import near_duplicate_pairs
from jclip.collection.index import CollectionIndex, IndexWriter
from jclip.collection.search import top_k_rows

_ROWS = flags.DEFINE_integer("rows", 100_000, "Embeddings in the index.", lower_bound=1)
_DIM = flags.DEFINE_integer("dim", 256, "Their size D.", lower_bound=1)
_QUERIES = flags.DEFINE_integer(
  "queries", 20, "Timed queries with the index cached.", lower_bound=1
)
_TOP_K = flags.DEFINE_integer("top_k", 10, "Hits per query.", lower_bound=1)
_DUPLICATE_ROWS = flags.DEFINE_integer(
  "duplicate_rows", 20_000, "Rows of the duplicate scan (the first of the index).", lower_bound=2
)
_THRESHOLD = flags.DEFINE_float("threshold", 0.95, "Cosine similarity of a near duplicate.")
_PLANTED = flags.DEFINE_integer("planted", 10, "Near copies planted in the scanned rows.")

WRITE_ROWS = 8192  # rows per append while writing the index


def unit_rows(rng, rows, dim):
  x = rng.normal(size=(rows, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_index(path: str, rows: int, dim: int, planted: int, scanned: int) -> None:
  """An index of random unit rows, in which rows scanned - planted ... scanned - 1 are near copies
  (1% noise) of rows 0 ... planted - 1."""
  rng = np.random.default_rng(0)
  emb_ND = unit_rows(rng, rows, dim)
  copies = np.arange(scanned - planted, scanned)
  emb_ND[copies] = emb_ND[:planted] + 0.01 * unit_rows(rng, planted, dim)
  emb_ND[copies] /= np.linalg.norm(emb_ND[copies], axis=1, keepdims=True)
  header = {
    "root": "/photos",
    "model": {"fingerprint": "bench", "workdir": "bench", "step": 0, "image_size": 224},
    "embed_dim": dim,
  }
  writer = IndexWriter(path, header, capacity=rows)
  for start in range(0, rows, WRITE_ROWS):
    stop = min(start + WRITE_ROWS, rows)
    records = [
      {"path": f"{r // 1000:03d}/IMG_{r:06d}.jpg", "size": 2_000_000 + r, "mtime_ns": 10**18 + r}
      for r in range(start, stop)
    ]
    writer.append(emb_ND[start:stop], records)
  writer.commit(complete=True)
  writer.close()


def query(path: str, query_D: np.ndarray, k: int) -> tuple[float, float, float]:
  """Seconds to open the index (index.json, the memory map), to score and rank every row, and to
  read the hits' paths from the manifest."""
  start = time.perf_counter()
  index = CollectionIndex.open(path)
  embeddings_ND = index.embeddings_ND
  opened = time.perf_counter()
  rows, _ = top_k_rows(embeddings_ND, query_D, k)
  ranked = time.perf_counter()
  index.paths(rows)
  return opened - start, ranked - opened, time.perf_counter() - ranked


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  """numpy's float32 n x n matmul, GFLOP/s: how fast this machine is right now."""
  a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
  a @ a
  start = time.perf_counter()
  for _ in range(repeats):
    a @ a
  return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def drop_from_page_cache(path: str) -> bool:
  """Asks the kernel to forget the cached pages of the index's files; False where it cannot."""
  if not hasattr(os, "posix_fadvise"):
    return False
  for name in os.listdir(path):
    fd = os.open(os.path.join(path, name), os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)
  return True


def main(argv):
  del argv
  rows, dim, k = _ROWS.value, _DIM.value, _TOP_K.value
  scanned, planted = min(_DUPLICATE_ROWS.value, rows), _PLANTED.value
  rng = np.random.default_rng(1)
  with tempfile.TemporaryDirectory(prefix="jclip_bench_index_") as path:
    start = time.perf_counter()
    write_index(path, rows, dim, planted, scanned)
    sizes = {name: os.path.getsize(os.path.join(path, name)) for name in os.listdir(path)}
    print(
      f"Index: {rows:,} rows x {dim} float32, written in {time.perf_counter() - start:.1f} s: "
      + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sorted(sizes.items()))
    )
    print(f"A query (a random unit vector): open, memory-map, top {k} in chunks, the hits' paths")
    if drop_from_page_cache(path):
      print(
        "  first, the index's files dropped from the page cache: "
        + _parts([query(path, unit_rows(rng, 1, dim)[0], k)])
      )
    times = [query(path, unit_rows(rng, 1, dim)[0], k) for _ in range(_QUERIES.value)]
    median = statistics.median(sum(parts) for parts in times)
    print(f"  cached, over {len(times)} queries: " + _parts(times))
    print(f"  {rows / median / 1e6:.1f} M rows/s (the median query)")
    emb_ND = CollectionIndex.open(path).embeddings_ND[:scanned]
    start = time.perf_counter()
    pairs = near_duplicate_pairs(emb_ND, _THRESHOLD.value)
    seconds = time.perf_counter() - start
    found = {tuple(pair) for pair in pairs.rows_P2.tolist()}
    copies = {(i, scanned - planted + i) for i in range(planted)}
    pairs_per_s = scanned * (scanned - 1) / 2 / seconds
    print(
      f"Duplicate scan of {scanned:,} rows at >= {_THRESHOLD.value}: {seconds:.2f} s, "
      f"{scanned / seconds:,.0f} rows/s, {pairs_per_s / 1e6:,.0f} M pairs/s "
      f"({2 * dim * pairs_per_s / 1e9:.1f} GFLOP/s); {pairs.found} pairs found, "
      f"{len(copies & found)} of the {planted} planted copies"
    )
  print(f"numpy's 2048 x 2048 float32 matmul on this machine now: {matmul_gflops():.1f} GFLOP/s")


def _parts(times: list[tuple[float, float, float]]) -> str:
  """'12.3 ms (open 1.0 + rank 8.0 + paths 3.3)': the medians of the queries' parts and whole."""
  whole, *parts = (
    statistics.median(values) * 1e3
    for values in ([sum(t) for t in times], *zip(*times, strict=True))
  )
  named = " + ".join(f"{n} {p:.1f}" for n, p in zip(("open", "rank", "paths"), parts, strict=True))
  return f"{whole:.1f} ms ({named})"


if __name__ == "__main__":
  app.run(lambda argv: run_reporting_user_errors(main, argv))
