"""rewrite_graph/: the aggregated graph the rewrites were read from, for inspection:
parquet nodes and edges, and GraphML for the largest components."""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from selflearn.core.graph import FAILURE, SUCCESS
from selflearn.run.publish import write_table
from selflearn.schema import arrow_schema

NODES = arrow_schema("rewrite_graph_nodes")
EDGES = arrow_schema("rewrite_graph_edges")
GRAPHML_COMPONENTS = 5


def write_rewrite_graph(spark, edges, key_stats, out: Path, min_users: int = 1) -> dict:
    """Published nodes and edges rest on at least `min_users` distinct users each (the
    floor of every table that leaves the operator's hands): a transition said by fewer,
    or a key said by fewer, is left out of parquet and GraphML alike."""
    from pyspark.sql import functions as F

    absorb = edges.where(F.col("dst").isin(SUCCESS, FAILURE)).groupBy("locale", "src").pivot("dst", [SUCCESS, FAILURE]).agg(F.sum("prob"))
    nodes = (
        key_stats.select("locale", "text", "n_users", "n_turns", "defect_rate")
        .join(absorb.withColumnRenamed("src", "text"), ["locale", "text"], "left")
        .select("locale", "text", "n_users", "n_turns", F.round("defect_rate", 9).alias("defect_rate"),
                F.round(F.coalesce(F.col(SUCCESS), F.lit(0.0)), 9).alias("success_prob"),
                F.round(F.coalesce(F.col(FAILURE), F.lit(0.0)), 9).alias("failure_prob"))
    )
    floored = key_stats.where(F.col("n_users") >= F.lit(int(min_users))).select("locale", "text")
    trans = edges.where(~F.col("dst").isin(SUCCESS, FAILURE) & (F.col("n_users") >= F.lit(int(min_users)))).select(
        "locale", F.col("src").alias("source"), F.col("dst").alias("target"), F.round("prob", 9).alias("prob"), "n_users"
    )
    trans = (trans.join(floored.withColumnRenamed("text", "source"), ["locale", "source"], "left_semi")
             .join(floored.withColumnRenamed("text", "target"), ["locale", "target"], "left_semi")
             .select("locale", "source", "target", "prob", "n_users"))
    # Only keys in some transition edge are graph nodes worth publishing.
    linked = trans.select("locale", F.col("source").alias("text")).union(trans.select("locale", F.col("target").alias("text"))).distinct()
    nodes_pdf = nodes.join(linked, ["locale", "text"]).toPandas()
    edges_pdf = trans.toPandas()
    n_nodes = write_table(nodes_pdf, out / "nodes", NODES, ["locale", "text"])
    n_edges = write_table(edges_pdf, out / "edges", EDGES, ["locale", "source", "target"])
    graphml = out / "graphml"
    graphml.mkdir(parents=True, exist_ok=True)
    for locale, group in edges_pdf.groupby("locale", sort=True):
        g = nx.DiGraph()
        for r in group.itertuples(index=False):
            g.add_edge(r.source, r.target, prob=float(r.prob), n_users=int(r.n_users))
        comps = sorted(nx.weakly_connected_components(g), key=lambda c: (-len(c), min(c)))[:GRAPHML_COMPONENTS]
        for i, comp in enumerate(comps):
            nx.write_graphml(g.subgraph(comp).copy(), graphml / f"{locale}-{i:02d}.graphml")
    return {"nodes": n_nodes, "edges": n_edges}
