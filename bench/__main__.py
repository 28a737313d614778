"""`python -m bench [--quick] [--keep] [--only NAME,...]`: see bench/__init__.py."""

import argparse
import os
import sys
import time

from bench import env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK") == "1",
                        help="smaller data and shorter runs (under 2 minutes)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    parser.add_argument("--only", default="", help="comma-separated: pages,big,move,api,"
                        "deploy,export,rollups,live,browser")  # fmt: skip
    args = parser.parse_args(argv)
    only = set(filter(None, args.only.split(",")))

    def wanted(name: str) -> bool:
        return not only or name in only

    began = time.monotonic()
    env.database_create()
    env.django_setup()
    try:
        figures, meta = _run(args.quick, wanted)
    finally:
        if not args.keep:
            env.database_drop()
    from bench.report import table, write_json

    meta["seconds"] = round(time.monotonic() - began, 1)
    print()
    print(table(figures))
    path = write_json(figures, meta)
    machine = meta["machine"]
    dirty = " (dirty tree)" if machine["working_tree_dirty"] else ""
    where = f"commit {machine['commit'][:10]}{dirty} -> {path}"
    print(f"\n{meta['mode']} run, {meta['seconds']} s, {machine['cores']} cores, "
          f"{machine['memory_gb']} GB, {where}")  # fmt: skip
    return 0


def _run(quick: bool, wanted) -> tuple[list, dict]:
    from bench import data, run
    from bench.server import Client, Server

    env.migrate()
    from activity.log import Actor
    from boards.tokens import token_create

    scale = {
        "delivered_big": 10_000 if quick else 100_000,
        "delivered_hist": 10_000 if quick else 98_000,
        "redeploys": 400 if quick else 8_020,
        "repeat": 8 if quick else 20,
        "move_seconds": 5 if quick else 30,
        "viewers": 50 if quick else 200,
    }
    owner = data.user_make("bench-owner")
    users = [data.user_make(f"bench-user-{i}") for i in range(16)]
    history_events = data.history_events(
        data.History(open_per_stage=data.spread(5000, data.STAGES[:4]),
                     delivered=scale["delivered_big"])
    ) + data.history_events(
        data.History(delivered=scale["delivered_hist"], redeployments=scale["redeploys"])
    )  # fmt: skip
    print(f"Building bench data ({'quick' if quick else 'full'}): ~{history_events:,} events")
    bar = data.progress(history_events, "data")
    boards = {}
    for size in (100, 500, 2000):
        boards[size] = data.board_with_cards(key=f"S{size}", owner=owner,
                                             per_stage=data.spread(size))  # fmt: skip
    big = data.board_make(key="BIG", name="Bench BIG", owner=owner)
    data.board_fill(big, data.History(open_per_stage=data.spread(5000, data.STAGES[:4]),
                                      delivered=scale["delivered_big"]),
                    owner=owner, bar=bar)  # fmt: skip
    hist = data.board_make(key="HIST", name="Bench history", owner=owner)
    data.board_fill(hist, data.History(delivered=scale["delivered_hist"],
                                       redeployments=scale["redeploys"]),
                    owner=owner, bar=bar)  # fmt: skip
    bar.close()
    move = data.board_with_cards(key="MOVE", owner=owner, editors=users,
                                 per_stage=data.spread(400))  # fmt: skip
    api = {
        100: data.board_with_cards(key="A100", owner=owner, per_stage=data.spread(500)),
        2000: data.board_with_cards(key="A2K", owner=owner, per_stage=data.spread(10_000)),
    }
    dep = data.board_with_cards(key="DEP", owner=owner,
                                per_stage={"staging": 20 * scale["repeat"]})  # fmt: skip
    _, token = token_create(actor=Actor(user=owner), user=owner, name="bench")
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    from activity.models import Event

    total_events = Event.objects.count()
    figures = []
    if wanted("rollups"):
        print("rollups ...")

        def incremental():
            data.board_with_cards(key="INC", owner=owner, per_stage={"todo": 10},
                                  delivered=198)  # fmt: skip

        figures += run.rollups(total_events, incremental)
    with Server() as server:
        client = Client(server.port)
        client.login(owner.username, data.PASSWORD)
        if wanted("pages"):
            print("board pages ...")
            figures += run.board_pages(server, client, {s: b.board.key for s, b in boards.items()},
                                       scale["repeat"])  # fmt: skip
        if wanted("big"):
            print("big board ...")
            label = f"5,000 + {scale['delivered_big']:,} deployed"
            figures += run.big_board(client, "BIG", "S100", owner, scale["repeat"], label)
        if wanted("move"):
            print(f"card moves ({scale['move_seconds']} s) ...")
            figures += run.card_moves(server, users, move, scale["move_seconds"])
            raw_board = data.board_with_cards(key="RAW", owner=owner, per_stage=data.spread(400))
            raw = run.raw_moves(raw_board, min(10, scale["move_seconds"]))
            figures.append(run.single("card move http", "raw psycopg baseline", "moves/s", raw))
            flux = next(f for f in figures if f.name == "moves/s (16 clients)")
            flux.ratio, flux.baseline = flux.median / raw, "raw psycopg"
        if wanted("api"):
            print("api moves ...")
            figures += run.api_moves(server, token, api, scale["repeat"])
        if wanted("deploy"):
            print("api deployments ...")
            figures += run.api_deployments(server, token, dep, scale["repeat"])
        if wanted("export"):
            print("csv export ...")
            from delivery.models import Deployment, DeploymentCard

            expected = (
                DeploymentCard.objects.count()
                + Deployment.objects.filter(cards__isnull=True).count()
            )
            figures += run.export_csv(server, token, expected)
        if wanted("live"):
            print("live fan-out ...")
            figures += run.live_fanout(server, users, move, scale["viewers"])
        if wanted("browser"):
            print("browser ...")
            figures += run.browser(server, owner, "BIG")
    meta = {
        "mode": "quick" if quick else "full",
        "machine": env.machine(),
        "events_in_log": total_events,
        "scale": scale,
        "note": "timings on a shared machine are noisy; see median and p95",
    }
    return figures, meta


if __name__ == "__main__":
    sys.exit(main())
