"""Time exact and approximate k-nearest-neighbour search of 64-D embeddings; print figures.

    python benchmarks/search_speed.py [--quick] [--sizes 100000,1000000] [--queries 10000]
                                      [--data gaussian,real] [--approximate real:1000000]
                                      [--ef-search 16,32,64,128] [--chunk-size 1024]
                                      [--json PATH]

Exact: ``neighbours.nearest_neighbours(queries, gallery, k=10)`` (exact ranking: float32
scores, float64 distances) for each data kind and gallery size. Its seconds, queries per second, and the effective
rate ``2 n m D / seconds`` (the FLOPs of the distance matrix product, over the whole
search) are set against TensorFlow's float32 matmul rate (4096 x 4096) measured in the same
process just before and just after that search (other work on a shared machine moves it:
the ratio uses their mean). The rates before and after all searches are printed too.

Approximate: ``approximate.ApproximateSearch`` (faiss HNSW) on the cases named by
``--approximate``: build seconds, search seconds at the library's ``ef_search``, speed-up
over the exact search of the same queries, recall@10 against the exact indices, and recall
and speed at each ``--ef-search``.

Data (float32, 64-D):

- gaussian: standard normal gallery and queries (no structure: the hardest case for a graph);
- real: MNIST digits through one fixed random 784 -> 64 projection (N(0, 1/64) entries,
  seed 0, pixels / 255). The gallery is the 60,000 training digits, then the same digits
  shifted by one of the 24 other offsets within +-2 pixels (np.roll), in a fixed order,
  until it has m vectors: real images with the cluster structure of 10 classes. Queries are
  the MNIST test digits (tiled if more than 10,000 are asked for).

Memory: each step runs in its own process. After the data is built, the process returns
freed memory to the system (``malloc_trim``), resets its resident high-water mark
(``/proc/self/clear_refs``) and reads its resident size; the peak extra memory of a step
is ``VmHWM`` after it minus that size, so it includes TensorFlow's and faiss's C
allocations (which tracemalloc does not see) and excludes the gallery itself. The load
average is printed: other work on the machine slows every figure.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

K = 10
DIMS = 64
FULL_SIZES, FULL_QUERIES = (100_000, 1_000_000), 10_000
QUICK_SIZES, QUICK_QUERIES = (10_000, 50_000), 1_000
MEMORY_TARGET_GIB = 2.0  # for 1,000,000 x 64-D, beyond the gallery itself


# ----------------------------------------------------------------------- in a child process

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> int:
    """Reset the resident high-water mark to the current resident size; return it (bytes).

    Memory freed earlier (building the data) goes back to the system first: otherwise a
    step could reuse it without its resident size growing, and its peak would read low.
    """
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kib("VmRSS") * 1024


def _peak_since(baseline: int) -> int:
    return _status_kib("VmHWM") * 1024 - baseline


def make_data(kind: str, size: int, queries: int):
    """(gallery, queries) float32 arrays: see the module doc."""
    import numpy as np

    if kind == "gaussian":
        rng = np.random.default_rng(0)
        return (rng.standard_normal((size, DIMS), dtype=np.float32),
                rng.standard_normal((queries, DIMS), dtype=np.float32))
    from keras_siamese.data import load_dataset

    mnist = load_dataset("mnist")
    projection = (np.random.default_rng(0).standard_normal((784, DIMS)) /
                  np.sqrt(DIMS)).astype(np.float32)
    train = mnist.x_train.reshape(-1, 28, 28)
    shifts = [(0, 0)] + [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                         if (dy, dx) != (0, 0)]
    if size > len(train) * len(shifts):
        raise SystemExit(f"real data goes up to {len(train) * len(shifts)} vectors")
    gallery = np.empty((size, DIMS), np.float32)
    for number, (dy, dx) in enumerate(shifts):
        start = number * len(train)
        if start >= size:
            break
        take = min(len(train), size - start)
        images = np.roll(train[:take], (dy, dx), axis=(1, 2)).reshape(take, 784)
        gallery[start:start + take] = (images.astype(np.float32) / 255) @ projection
    test = mnist.x_test.reshape(-1, 784)
    test = np.resize(test, (queries, 784))
    return gallery, (test.astype(np.float32) / 255) @ projection


def step_matmul() -> dict:
    import tensorflow as tf

    rates = {}
    for dtype in (tf.float32, tf.float64):
        a = tf.random.normal((4096, 4096), dtype=dtype, seed=1)
        b = tf.random.normal((4096, 4096), dtype=dtype, seed=2)
        tf.matmul(a, b).numpy()  # warm-up
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            tf.matmul(a, b).numpy()
            best = min(best, time.perf_counter() - started)
        rates[dtype.name] = 2 * 4096**3 / best / 1e9
    return {"float32_gflops": rates["float32"], "float64_gflops": rates["float64"]}


def step_exact(kind, size, queries, save, chunk_size) -> dict:
    import numpy as np

    from keras_siamese import neighbours

    gallery, query_vectors = make_data(kind, size, queries)
    # TensorFlow start-up and the one trace of the search, on a gallery large enough for
    # the same (blocked) path as the timed search.
    neighbours.nearest_neighbours(query_vectors[:4], gallery[:min(size, 10_000)], K)
    before = step_matmul()["float32_gflops"]
    baseline = _reset_peak()
    started = time.perf_counter()
    indices = neighbours.nearest_neighbours(query_vectors, gallery, K, chunk_size=chunk_size)
    seconds = time.perf_counter() - started
    peak = _peak_since(baseline)
    after = step_matmul()["float32_gflops"]
    if save:
        np.save(save, indices)
    return {"seconds": seconds, "peak_extra_bytes": peak, "gallery_bytes": gallery.nbytes,
            "matmul_float32_gflops": (before + after) / 2}


def step_approximate(kind, size, queries, exact_file, ef_values) -> dict:
    import numpy as np

    from keras_siamese import approximate

    gallery, query_vectors = make_data(kind, size, queries)
    exact = np.load(exact_file)
    approximate._faiss()
    baseline = _reset_peak()
    started = time.perf_counter()
    search = approximate.ApproximateSearch(gallery)
    build = time.perf_counter() - started
    build_peak = _peak_since(baseline)
    index_bytes = _status_kib("VmRSS") * 1024 - baseline
    del gallery  # the search holds its own copy
    baseline = _reset_peak()
    started = time.perf_counter()
    indices, _ = search.search(query_vectors, K)
    seconds = time.perf_counter() - started
    search_peak = _peak_since(baseline)
    again, _ = search.search(query_vectors, K)
    sweep = []
    for ef in ef_values:
        search.ef_search = ef
        started = time.perf_counter()
        found, _ = search.search(query_vectors, K)
        sweep.append({"ef_search": ef, "seconds": time.perf_counter() - started,
                      "recall": approximate.recall_at_k(found, exact)})
    return {"build_seconds": build, "build_peak_extra_bytes": build_peak,
            "index_bytes": index_bytes, "search_seconds": seconds,
            "search_peak_extra_bytes": search_peak, "ef_search": approximate.EF_SEARCH,
            "recall": approximate.recall_at_k(indices, exact),
            "repeat_identical": bool(np.array_equal(indices, again)), "sweep": sweep}


# ----------------------------------------------------------------------- the parent

def _child(*args) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, __file__, "--step", *map(str, args)], env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (including the hidden --step used by the child processes)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes {QUICK_SIZES} and {QUICK_QUERIES} queries")
    parser.add_argument("--sizes", help="gallery sizes, comma-separated")
    parser.add_argument("--queries", type=int)
    parser.add_argument("--data", default="gaussian,real", help="data kinds: gaussian,real")
    parser.add_argument("--approximate",
                        help="KIND:SIZE cases for the approximate search, comma-separated "
                             "(default: real at the largest size, gaussian at the smallest); "
                             "'none' for none")
    parser.add_argument("--ef-search", default="16,32,64,128",
                        help="ef_search values for the recall/speed sweep")
    parser.add_argument("--chunk-size", type=int, default=1024,
                        help="queries per chunk of the exact search (its default: 1024); "
                             "memory holds chunk_size x gallery size / 64 block maxima")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_step(step: list) -> None:
    """In a child process: run one --step (matmul, exact or approximate); print its JSON."""
    name, *rest = step
    if name == "matmul":
        result = step_matmul()
    elif name == "exact":
        kind, size, queries, save, chunk_size = rest
        result = step_exact(kind, int(size), int(queries), save if save != "-" else None,
                            int(chunk_size))
    else:
        kind, size, queries, exact_file, ef_values = rest
        result = step_approximate(kind, int(size), int(queries), exact_file,
                                  [int(v) for v in ef_values.split(",") if v])
    print(json.dumps(result))


def approximate_cases(spec, kinds: list, sizes: list) -> list:
    """The (kind, size) cases for the approximate search, from --approximate."""
    if spec is None:
        cases = [("real", max(sizes)), ("gaussian", min(sizes))]
    elif spec == "none":
        cases = []
    else:
        cases = [(kind, int(size)) for kind, size in
                 (case.split(":") for case in spec.split(","))]
    return [case for case in cases if case[0] in kinds and case[1] in sizes]


def measure_start(queries: int, chunk_size: int) -> dict:
    """Print the set-up line and the matmul rates before the searches; return the figures."""
    figures = {"queries": queries, "chunk_size": chunk_size, "k": K, "dims": DIMS,
               "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
    print(f"{queries} queries, k={K}, {DIMS}-D, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    figures["matmul_before"] = _child("matmul")
    print(f"TensorFlow matmul 4096x4096: float32 "
          f"{figures['matmul_before']['float32_gflops']:.0f} GFLOP/s, float64 "
          f"{figures['matmul_before']['float64_gflops']:.0f} GFLOP/s")
    return figures


def run_exact(kinds, sizes, queries, cases, chunk_size, folder) -> dict:
    """Time the exact search for each kind and size; print and return {(kind, size): result}."""
    exact = {}
    print(f"\nexact search (neighbours.nearest_neighbours, "
          f"chunk_size={chunk_size}):")
    for kind in kinds:
        for size in sizes:
            save = os.path.join(folder, f"{kind}_{size}.npy") if (kind, size) in cases \
                else "-"
            result = _child("exact", kind, size, queries, save, chunk_size)
            exact[kind, size] = result
            result["queries_per_second"] = queries / result["seconds"]
            result["gflops"] = 2 * queries * size * DIMS / result["seconds"] / 1e9
            print(f"  {kind:8} {size:>9,}: {result['seconds']:7.1f} s, "
                  f"{result['queries_per_second']:8.0f} queries/s, "
                  f"{result['gflops']:6.1f} GFLOP/s effective, peak extra memory "
                  f"{_gib(result['peak_extra_bytes'])} (gallery "
                  f"{_gib(result['gallery_bytes'])})", flush=True)
    return exact


def run_approximate(cases, queries, ef_search, folder, exact) -> dict:
    """Time the approximate search on each case; print and return {"kind:size": result}."""
    figures = {}
    if cases:
        print(f"\napproximate search (faiss HNSW, ef_search={ef_search} swept):")
    for kind, size in cases:
        result = _child("approximate", kind, size, queries,
                        os.path.join(folder, f"{kind}_{size}.npy"), ef_search)
        result["speed_up"] = exact[kind, size]["seconds"] / result["search_seconds"]
        result["queries_per_second"] = queries / result["search_seconds"]
        figures[f"{kind}:{size}"] = result
        print(f"  {kind:8} {size:>9,}: build {result['build_seconds']:.1f} s (peak extra "
              f"{_gib(result['build_peak_extra_bytes'])}, index "
              f"{_gib(result['index_bytes'])}); search {result['search_seconds']:.2f} s "
              f"at ef_search={result['ef_search']} ({result['queries_per_second']:.0f} "
              f"queries/s, peak extra {_gib(result['search_peak_extra_bytes'])}), "
              f"{result['speed_up']:.1f}x exact, recall@{K} {result['recall']:.4f}, "
              f"repeat identical: {result['repeat_identical']}")
        for point in result["sweep"]:
            print(f"      ef_search={point['ef_search']:4}: recall@{K} "
                  f"{point['recall']:.4f}, {queries / point['seconds']:8.0f} queries/s, "
                  f"{exact[kind, size]['seconds'] / point['seconds']:6.1f}x exact",
                  flush=True)
    return figures


def measure_end(figures: dict) -> None:
    """Measure and print the matmul rates after the searches."""
    figures["matmul_after"] = _child("matmul")
    figures["load_average_end"] = os.getloadavg()
    print(f"\nTensorFlow matmul after the searches: float32 "
          f"{figures['matmul_after']['float32_gflops']:.0f} GFLOP/s, float64 "
          f"{figures['matmul_after']['float64_gflops']:.0f}; load average "
          f"{os.getloadavg()[0]:.1f}")


def print_targets(exact: dict, approximate: dict) -> None:
    """Print whether each exact and approximate case meets its speed and memory targets."""
    print("\ntargets:")
    for (kind, size), result in exact.items():
        ratio = result["gflops"] / result["matmul_float32_gflops"]
        print(f"  exact {kind} {size:,}: {ratio:.0%} of the float32 matmul rate measured "
              f"just before and after it ({result['matmul_float32_gflops']:.0f} GFLOP/s; "
              f"{'meets' if ratio >= 0.5 else 'misses'} 'at least half'"
              f"{'' if ratio >= 0.5 else f', by {0.5 / ratio:.1f}x'})")
    for (kind, size), result in exact.items():
        if size >= 1_000_000:  # the memory target is set for 1,000,000 vectors
            peak = result["peak_extra_bytes"]
            print(f"  exact {kind} {size:,}: peak extra memory {_gib(peak)} "
                  f"({'under' if peak < MEMORY_TARGET_GIB * 2**30 else 'OVER'} "
                  f"{MEMORY_TARGET_GIB:.0f} GiB)")
    for (kind, size), result in ((tuple(key.split(":")), r)
                                 for key, r in approximate.items()):
        good = result["recall"] >= 0.95 and result["speed_up"] >= 10
        peak = max(result["build_peak_extra_bytes"], result["search_peak_extra_bytes"])
        print(f"  approximate {kind} {int(size):,}: recall@{K} {result['recall']:.4f} at "
              f"{result['speed_up']:.1f}x exact ({'meets' if good else 'misses'} >= 0.95 at "
              f">= 10x); peak extra memory {_gib(peak)} "
              f"({'under' if peak < MEMORY_TARGET_GIB * 2**30 else 'OVER'} "
              f"{MEMORY_TARGET_GIB:.0f} GiB)")


def main(argv=None) -> None:
    """Run the benchmark (or, with --step, one step of it in a child process)."""
    args = parse_args(argv)
    if args.step:
        run_step(args.step)
        return

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        list(QUICK_SIZES if args.quick else FULL_SIZES)
    queries = args.queries or (QUICK_QUERIES if args.quick else FULL_QUERIES)
    kinds = args.data.split(",")
    cases = approximate_cases(args.approximate, kinds, sizes)

    figures = measure_start(queries, args.chunk_size)
    with tempfile.TemporaryDirectory() as folder:
        exact = run_exact(kinds, sizes, queries, cases, args.chunk_size, folder)
        figures["exact"] = {f"{kind}:{size}": r for (kind, size), r in exact.items()}
        figures["approximate"] = run_approximate(cases, queries, args.ef_search, folder,
                                                 exact)
    measure_end(figures)
    print_targets(exact, figures["approximate"])

    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
