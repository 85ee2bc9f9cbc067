"""One warm engine behind three faces: `open_index(...).query` from Python, `ragcli index query` (one query
or a batch file) from the shell, and `ragcli serve` over HTTP return the same hits for every family."""

import asyncio
import json
import shutil
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import run
from indexes import BuildRequest, UserError, build_index, open_index
from indexes.http import create_app
from recsys.synthetic import item_table, markov_interactions, write_recbole
from vision.synthetic import make_conditional, write_conditional

QUESTION = "Can a minor cancel a contract made without a guardian's consent?"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def built(home, tmp_path_factory):
    """A statute, an item and an image index, named under one $RAGCLI_HOME."""
    root = tmp_path_factory.mktemp("data")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAGCLI_HOME", str(home))
    recsys_data = write_recbole(root / "recsys", "sample", markov_interactions(80, 20, seed=5), item_table(20))
    model = root / "sasrec"
    assert run("train", "sasrec", "--data", recsys_data, "--out", model, "--epochs", 2, "--maxlen", 8, "--hidden", 16,
               "--blocks", 1, "--device", "cpu").exit_code == 0
    write_conditional(make_conditional(n=20, size=32, seed=1), root / "shapes")
    build_index(BuildRequest(corpus="coliee", device="cpu"), "statutes")
    build_index(BuildRequest(corpus=str(recsys_data), model=model, device="cpu"), "items")
    build_index(BuildRequest(corpus="images", images=root / "shapes" / "test.npz", encoder="timm:test_vit",
                             device="cpu"), "shapes")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "query.png")
    yield root
    mp.undo()


@pytest.fixture()
def served(built, home, monkeypatch):
    monkeypatch.setenv("RAGCLI_HOME", str(home))
    return {name: open_index(name, device="cpu") for name in ("statutes", "items", "shapes")}


def _ids(hits):
    return [h["id"] if isinstance(h, dict) else h.id for h in hits]


def test_python_shell_and_http_return_the_same_hits(served, built):
    client = TestClient(create_app(served, image_root=built))
    image = str(built / "query.png")
    for name, args, query in [("statutes", [QUESTION], {"text": QUESTION}),
                              ("items", ["--history", "3,4,5"], {"history": ["3", "4", "5"]}),
                              ("shapes", ["--image", image], {"image": image})]:
        engine = served[name]
        python = engine.query(next(iter(query.values())), k=4)
        shell = json.loads(run("index", "query", name, *args, "-k", 4, "--device", "cpu", "--json").stdout)
        http = client.post(f"/indexes/{name}/query", json={"query": query, "k": 4}).json()["results"][0]["hits"]
        assert _ids(python) == _ids(shell) == _ids(http) and len(python) == 4, name
        np.testing.assert_allclose([h.score for h in python], [h["score"] for h in http], rtol=1e-5)
        batch = engine.query_batch([next(iter(query.values()))] * 2, k=4)
        assert [_ids(b) for b in batch] == [_ids(python)] * 2
    with open(image, "rb") as fh:
        upload = client.post("/indexes/shapes/query/image", files={"image": ("q.png", fh, "image/png")}, data={"k": 4})
    assert _ids(upload.json()["results"][0]["hits"]) == _ids(served["shapes"].query(image, k=4))
    elsewhere = TestClient(create_app(served)).post("/indexes/shapes/query", json={"query": {"image": image}})
    assert elsewhere.status_code == 400 and "--image-root" in elsewhere.json()["detail"]
    first = upload.json()["results"][0]["hits"][0]["id"]
    png = client.get(f"/indexes/shapes/items/{first}/image")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_statute_answers_and_explains_through_the_engine(served):
    hits = served["statutes"].query(QUESTION, k=3)
    assert hits[0].id == "5" and hits[0].payload["title"].startswith("Article 5")
    filtered = served["statutes"].query(QUESTION, k=3, where=("title", "!=", hits[0].payload["title"]))
    assert hits[0].id not in _ids(filtered) and len(filtered) == 3
    assert hits[0].id not in _ids(served["statutes"].query(QUESTION, k=3, exclude=[hits[0].id]))
    with pytest.raises(UserError, match="does not take"):
        served["statutes"].query(QUESTION, skip_unknown=True)
    with pytest.raises(UserError, match="empty"):
        served["statutes"].query("   ")


@pytest.mark.parametrize("fmt", ["lines", "tsv", "jsonl"])
def test_batch_query_files_write_trec_runs(served, tmp_path, fmt):
    questions = [QUESTION, "Who owns land bought twice?"]
    file = tmp_path / f"q.{'jsonl' if fmt == 'jsonl' else 'txt'}"
    file.write_text({"lines": "\n".join(questions),
                     "tsv": "\n".join(f"q{i}\t{t}" for i, t in enumerate(questions)),
                     "jsonl": "\n".join(json.dumps({"qid": f"q{i}", "text": t}) for i, t in enumerate(questions))}[fmt] + "\n")
    out = tmp_path / "run.trec"
    result = run("index", "query", "statutes", "--queries", file, "--output", out, "--hits", 5, "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in out.read_text().splitlines()]
    qids = ["1", "2"] if fmt == "lines" else ["q0", "q1"]
    assert [line[0] for line in lines] == [qids[0]] * 5 + [qids[1]] * 5
    assert [line[2] for line in lines[:5]] == _ids(served["statutes"].query(QUESTION, k=5))
    assert all(line[1] == "Q0" and line[5] == "ragcli" for line in lines) and lines[0][3] == "1"


def test_recsys_batch_jsonl_and_bad_query_files(served, tmp_path):
    file = tmp_path / "h.jsonl"
    file.write_text('{"qid": "u1", "history": ["3", "4"]}\n{"qid": "u2", "history": [5]}\n')
    result = run("index", "query", "items", "--queries", file, "-k", 3, "--device", "cpu", "--json")
    rows = json.loads(result.stdout)
    assert [r["qid"] for r in rows] == ["u1", "u2"] and _ids(rows[1]["hits"]) == _ids(served["items"].query(["5"], k=3))
    for content, message in [('{"qid": "u1", "text": "x"}\n', "queried with 'history'"), ("{not json\n", "not JSON"),
                             ('{"qid": 1, "history": ["3"]}\n{"qid": 1, "history": ["4"]}\n', "repeats a qid"),
                             ("", "no queries"), ('{"qid": "u", "history": ["3"], "evil": 1}\n', "unknown query fields")]:
        file.write_text(content)
        bad = run("index", "query", "items", "--queries", file, "--device", "cpu")
        assert bad.exit_code == 2 and message in bad.stderr and len(bad.stderr.splitlines()) == 1, content


def test_eval_run_agrees_with_eval_coliee(tmp_path):
    run_file, qrels = tmp_path / "r.run", tmp_path / "gold.qrels"
    coliee = run("eval", "coliee", "--years", "R02,R03", "--model", "bm25", "--run", run_file, "--json")
    assert coliee.exit_code == 0, coliee.output
    assert run("data", "qrels", "--years", "R02,R03", "--out", qrels).exit_code == 0
    scored = run("eval", "run", run_file, "--qrels", qrels, "--metrics", "SetP,SetR,SetF(beta=4.0)", "--json")
    assert scored.exit_code == 0, scored.output
    ours, theirs = json.loads(coliee.stdout)["metrics"], json.loads(scored.stdout)["measures"]
    assert theirs["SetF(beta=4.0)"] == pytest.approx(ours["SetF2"], abs=1e-6)  # trec_eval's set_F beta is beta squared
    assert theirs["SetP"] == pytest.approx(ours["SetP"], abs=1e-6)
    assert theirs["SetR"] == pytest.approx(ours["SetR"], abs=1e-6)
    bad = run("eval", "run", run_file, "--qrels", qrels, "--metrics", "nDCG@ten")
    assert bad.exit_code == 2 and len(bad.stderr.splitlines()) == 1


def test_http_errors_filters_metrics_and_api_key(served):
    client = TestClient(create_app(served))
    assert client.get("/health").json() == {"status": "ok", "indexes": 3}
    assert {i["name"]: i["family"] for i in client.get("/indexes").json()} == {
        "statutes": "retrieval", "items": "recsys", "shapes": "vision"}
    assert client.get("/indexes/statutes").json()["rows"] == 24
    assert client.get("/indexes/nope").status_code == 404
    assert client.post("/indexes/nope/query", json={"query": {"text": "x"}}).status_code == 404
    for body in [{"query": {"text": "x"}, "k": 0}, {"query": {"text": "x"}, "evil": 1}, {}, {"query": {"text": 3.5}}]:
        response = client.post("/indexes/statutes/query", json=body)
        assert response.status_code == 422 and "\n" not in response.json()["detail"], body
    for body in [{"query": {"history": ["nope"]}}, {"query": {"text": "x"}}]:
        response = client.post("/indexes/items/query", json=body)
        assert response.status_code == 400 and "\n" not in response.json()["detail"], body
    sql = {"query": {"text": QUESTION}, "where": ["title", "==", "x' OR 1=1 --"]}
    assert client.post("/indexes/statutes/query", json=sql).json()["results"][0]["hits"] == []
    assert client.post("/indexes/statutes/query", json={**sql, "where": "1=1"}).status_code == 400
    assert 'ragcli_requests_total{index="statutes",status="200"}' in client.get("/metrics").text
    assert "<title>ragcli search</title>" in client.get("/").text

    locked = TestClient(create_app(served, api_key="s3cret"))
    assert locked.get("/indexes").status_code == 401 and locked.get("/health").status_code == 200
    assert locked.get("/indexes", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert locked.get("/indexes", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_concurrent_requests_are_micro_batched_and_each_gets_its_own_answer(served):
    app = create_app(served, window=0.05)
    histories = [[str(i), str(i + 1)] for i in range(1, 13)]

    async def ask_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            replies = await asyncio.gather(*[client.post("/indexes/items/query", json={"query": {"history": h}, "k": 3})
                                             for h in histories])
        return [r.json()["results"][0]["hits"] for r in replies]

    answers = asyncio.run(ask_all())
    assert [_ids(a) for a in answers] == [_ids(served["items"].query(h, k=3)) for h in histories]
    assert app.state.batchers["items"].batches < len(histories)


def test_the_cli_refuses_options_a_family_does_not_take(tmp_path):
    for args in (["--corpus", "coliee", "--condition", "x", "--images", tmp_path / "nope"],
                 ["--corpus", "images", "--data-dir", tmp_path, "--images", tmp_path, "--encoder", "timm:test_vit"]):
        result = run("index", "build", *args, "--name", "x")
        assert result.exit_code == 2 and "does not take" in result.stderr, result.output
    assert run("index", "query", "statutes", "x", "--skip-unknown").exit_code == 2


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture()
def live_server(served):
    """The app on a free loopback port, in a thread."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_search_page_in_a_real_browser(live_server, built, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, 30)

    def search(index: str, fill) -> list:
        Select(driver.find_element(By.ID, "index")).select_by_value(index)
        driver.execute_script("document.getElementById('results').innerHTML = ''")
        fill()
        driver.find_element(By.ID, "go").click()
        return wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit"))

    try:
        driver.get(live_server)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#index option")) == 3)
        text = driver.find_element(By.ID, "text")
        hits = search("statutes", lambda: (text.clear(), text.send_keys(QUESTION)))
        assert "Article 5" in hits[0].text and len(hits) == 10
        hits = search("items", lambda: (text.clear(), text.send_keys("3, 4, 5")))
        assert [h.find_element(By.TAG_NAME, "strong").text for h in hits] == _ids(
            TestClient(create_app({"items": open_index("items", device="cpu")})).post(
                "/indexes/items/query", json={"query": {"history": ["3", "4", "5"]}}).json()["results"][0]["hits"])
        hits = search("shapes", lambda: driver.find_element(By.ID, "image").send_keys(str(built / "query.png")))
        assert len(hits) == 4  # every test image
        wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", img) > 0
                                 for img in d.find_elements(By.CSS_SELECTOR, "#results img")))
        driver.save_screenshot(str(tmp_path / "search-page.png"))
        assert (tmp_path / "search-page.png").stat().st_size > 1000
    finally:
        driver.quit()


def test_a_tuned_hybrid_is_saved_and_served_as_it_is(served, tmp_path):
    from retrieval.fusion import HybridConfig

    tuned = run("eval", "coliee", "--years", "R03", "--valid-years", "R02", "--save-hybrid", tmp_path / "hybrid", "--json")
    assert tuned.exit_code == 0, tuned.output
    result = json.loads(tuned.stdout)
    saved = HybridConfig.load(tmp_path / "hybrid")
    assert dict(zip(saved.retrievers, saved.weights)) == pytest.approx(result["weights"]) and saved.ratio == result["ratio"]
    assert run("eval", "coliee", "--save-hybrid", tmp_path / "hybrid").exit_code == 2  # exists: --overwrite
    built = run("index", "build", "--corpus", "coliee", "--hybrid", tmp_path / "hybrid", "--name", tmp_path / "ix",
                "--device", "cpu")
    assert built.exit_code == 0, built.output
    engine = open_index(tmp_path / "ix", device="cpu")
    assert engine.hybrid.config == saved  # save -> load: the same recipe, so the same scores
    default = open_index("statutes", device="cpu").hybrid.config
    assert default == HybridConfig(("bm25", "dense"), (0.5, 0.5))
    for bad in [(("bm25",), (0.5, 0.5)), (("bm25", "bm25"), (0.5, 0.5)), (("bm25",), (float("nan"),)), (("bm25",), (0.0,))]:
        with pytest.raises(UserError):
            HybridConfig(*bad)


def test_a_statute_index_from_before_saved_hybrids_still_answers(served, home, tmp_path):
    import shutil as sh

    old = tmp_path / "old"
    sh.copytree((home / "indexes" / "statutes").resolve(), old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["encoder"] = {k: v for k, v in manifest["encoder"].items() if k != "hybrid"}
    (old / "manifest.json").write_text(json.dumps({**manifest, "encoder": {**manifest["encoder"], "weights": {"bm25": 0.5, "dense": 0.5}}}))
    assert _ids(open_index(old, device="cpu").query(QUESTION, k=5)) == _ids(served["statutes"].query(QUESTION, k=5))
    (old / "manifest.json").write_text(json.dumps(manifest))  # neither a recipe nor weights
    with pytest.raises(UserError, match="no fusion recipe"):
        open_index(old, device="cpu")


def test_review_regressions_cancelled_callers_bad_types_and_keys(served, tmp_path):
    from indexes.batching import MicroBatcher
    from indexes.engine import Query

    batcher = MicroBatcher(served["items"], window=0.05)

    async def cancel_one():
        first, second, third = (asyncio.ensure_future(batcher.query([[str(i), str(i + 1)]], k=3)) for i in (1, 2, 3))
        await asyncio.sleep(0.01)
        second.cancel()
        return await asyncio.wait_for(asyncio.gather(first, third), 10)

    answers = asyncio.run(cancel_one())
    assert [_ids(a[0]) for a in answers] == [_ids(served["items"].query(h, k=3)) for h in (["1", "2"], ["3", "4"])]
    with pytest.raises(UserError, match="not one string"):
        served["items"].query("12")
    for record in ({"image": "q.png", "condition": 5}, {"image": True}, {"history": [True]}, {"text": 3}):
        with pytest.raises(UserError):
            Query.from_record(record)
    assert TestClient(create_app(served, api_key="k")).get("/indexes", params={"key": "\u00e9"}).status_code == 401
    (tmp_path / "q.qrels").write_text("q1 0 d1 1.0\n")
    (tmp_path / "r.run").write_text("q1 Q0 d1 1 2.0 x\n")
    bad = run("eval", "run", tmp_path / "r.run", "--qrels", tmp_path / "q.qrels")
    assert bad.exit_code == 2 and "not a number" in bad.stderr
