"""Message passing with the first map split by blocks vs on the concatenation per edge, measured in one run.

Run: ``python benchmarks/message_passing.py [--threads 1] [--repeats 10]``. ``EdgeConv`` (conformer graphs) and
``EGNNLayer`` (vector fields) apply the first linear map of their message MLP block by block: the blocks that
read :math:`h_i` and :math:`h_j` once per node, and ``EdgeConv``'s edge block once per undirected pair. The
baseline evaluates the textbook form, the same MLP on the concatenated per-edge inputs, with the same weights.
Prints forward+backward time of a stack of layers at the experiments' default sizes, the ratio, and the largest
difference of the outputs (float64 check, so the two compute the same function).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor

from geodiffusion.data.conformers import load_conformers
from geodiffusion.models.edge import EdgeConv
from geodiffusion.models.egnn import EGNNLayer


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def _mean_scatter(values: Tensor, index: Tensor, size: int) -> Tensor:
    out = torch.zeros(size, values.shape[-1], dtype=values.dtype).index_add_(0, index, values)
    count = torch.zeros(size, dtype=values.dtype).index_add_(0, index, torch.ones_like(index, dtype=values.dtype))
    return out / count.clamp_min(1)[:, None]


def edge_conv_concat(conv: EdgeConv, h: Tensor, edge_index: Tensor, e: Tensor) -> Tensor:
    """EdgeConv on the concatenation, per directed edge (both directions of each canonical edge)."""
    index = torch.cat([edge_index, edge_index.flip(0)], 1)
    j, i = index
    normed = conv.norm(h)
    messages = conv.phi(torch.cat([normed[i], normed[j], torch.cat([e, e])], -1))
    agg = torch.zeros_like(h).index_add_(0, i, messages)
    return h + conv.gamma(torch.cat([h, agg], -1))


def egnn_concat(layer: EGNNLayer, h: Tensor, v: Tensor, pos: Tensor, edge_index: Tensor, rbf: Tensor):
    """EGNNLayer on the concatenation, per edge."""
    j, i = edge_index
    n, c = pos.shape[-1], layer.channels
    vi, vj = v[i], v[j]
    r = pos[i] - pos[j]
    invariants = [h[i], h[j], rbf, (r.unsqueeze(-1) * vi).sum(1), (r.unsqueeze(-1) * vj).sum(1), (vi.mT @ vj).flatten(1)]
    m = layer.phi_e(torch.cat(invariants, -1))
    a_r, a_v = layer.phi_vec(m).chunk(2, -1)
    dv = r.unsqueeze(-1) * a_r.unsqueeze(1) + vj * a_v.unsqueeze(1)
    agg = _mean_scatter(torch.cat([m, dv.flatten(1)], -1), i, h.shape[0])
    m_agg, dv_agg = agg[:, : h.shape[-1]], agg[:, h.shape[-1] :].reshape(-1, n, c)
    return h + layer.phi_h(torch.cat([h, m_agg], -1)), layer.mix(v) + dv_agg


def _edge_case(dtype: torch.dtype, molecules: int, copies: int, hidden: int = 96, layers: int = 4):
    from torch_geometric.data import Batch

    graphs = [e.graph() for e in load_conformers("test", limit=molecules) for _ in range(copies)]
    batch = Batch.from_data_list(graphs)
    gen = torch.Generator().manual_seed(0)
    convs = [EdgeConv(hidden, "silu").to(dtype) for _ in range(layers)]
    h0 = torch.randn(batch.num_nodes, hidden, generator=gen, dtype=dtype)
    e = torch.randn(batch.edge_index.shape[1], hidden, generator=gen, dtype=dtype)

    def run(split: bool) -> Tensor:
        h = h0
        for conv in convs:
            h = conv(h, batch.edge_index, e, both_ways=True) if split else edge_conv_concat(conv, h, batch.edge_index, e)
        return h

    label = f"EdgeConv x{layers} (H {hidden}), {batch.num_graphs} molecules, {batch.edge_index.shape[1]} pairs"
    return label, run, convs


def _egnn_case(dtype: torch.dtype, fields: int, points: int, hidden: int = 64, channels: int = 8, layers: int = 4):
    gen = torch.Generator().manual_seed(0)
    layer_list = [EGNNLayer(hidden, channels, 16, "silu").to(dtype) for _ in range(layers)]
    idx = torch.arange(points)
    src, dst = idx.repeat_interleave(points), idx.repeat(points)
    keep = src != dst
    offsets = (torch.arange(fields) * points).view(-1, 1)
    edge_index = torch.stack([(dst[keep] + offsets).reshape(-1), (src[keep] + offsets).reshape(-1)])
    nodes = fields * points
    h0 = torch.randn(nodes, hidden, generator=gen, dtype=dtype)
    v0 = torch.randn(nodes, 2, channels, generator=gen, dtype=dtype)
    pos = torch.randn(nodes, 2, generator=gen, dtype=dtype)
    rbf = torch.rand(edge_index.shape[1], 16, generator=gen, dtype=dtype)

    def run(split: bool) -> Tensor:
        h, v = h0, v0
        for layer in layer_list:
            h, v = layer(h, v, pos, edge_index, rbf) if split else egnn_concat(layer, h, v, pos, edge_index, rbf)
        return torch.cat([h, v.flatten(1)], -1)

    label = f"EGNNLayer x{layers} (H {hidden}, C {channels}), {fields} fields x {points} points, {edge_index.shape[1]} edges"
    return label, run, layer_list


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = (lambda dtype: _edge_case(dtype, 40, 4), lambda dtype: _egnn_case(dtype, 32, 30))
    print(f"device: cpu, torch threads: {torch.get_num_threads()}, forward + backward, float32")
    print("| layers and batch | concatenation, ms | split blocks, ms | ratio | max abs. difference (float64) |")
    print("|---|---|---|---|---|")
    for make in cases:
        _, run64, _ = make(torch.float64)
        with torch.no_grad():
            diff = float((run64(True) - run64(False)).abs().max())
        label, run, modules = make(torch.float32)

        def step(split: bool, run=run, modules=modules):
            def go():
                for module in modules:
                    module.zero_grad()
                run(split).square().mean().backward()

            return go

        base, split = _time(step(False), args.repeats), _time(step(True), args.repeats)
        print(f"| {label} | {1e3 * base:.1f} | {1e3 * split:.1f} | {base / split:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
