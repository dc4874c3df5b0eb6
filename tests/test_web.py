"""The search page end to end: a real tiny pipeline run pushes the model and its search
companion, ``cmgan serve`` and ``cmgan web`` run as subprocesses on 127.0.0.1, and headless
Chromium (Debian's chromium + chromium-driver, driven by Selenium) uses the page the way a
person would. The results on the page must be the ones the gRPC client gets for the same query.

Served models: a features-only model (gallery item queries; sentence and image queries are
refused with an explanation) and, where the serving code exports the raw-input signatures
(``search_text_string``, ``search_image_bytes``), a model trained on raw images and texts, on
which a typed sentence and an uploaded image are searched too.

Screenshots go to ``$CMGAN_TEST_ARTIFACTS`` (default: a pytest temporary folder); the path is
printed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.client import ServingClient

from conftest import TINY_RUN_KINDS, cmgan_process, serving_process

REPO = Path(__file__).resolve().parents[1]
MODEL = "cmgan"
TOP_K = 10
UPLOAD_LIMIT_MB = 0.05  # small, so the "too large" case needs only a small file
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,1600")


# --------------------------------------------------------------------------- processes
@contextlib.contextmanager
def web_process(*web_args: str):
    """``cmgan web <web_args> --port 0`` in its own process; yields its URL."""
    with cmgan_process("web", "search page on ", "--port", "0", *web_args) as url:
        yield url


@pytest.fixture(scope="module", params=TINY_RUN_KINDS)
def served(request, tiny_pipeline_run):
    """(kind, config, client, page URL): the session's tiny pipeline run of that kind (images
    as pixels and captions as text for "raw"), ``cmgan serve`` and ``cmgan web``."""
    config, _ = tiny_pipeline_run(request.param)
    with serving_process("--model-base-path", config.serving_root, "--model-name", MODEL,
                         "--poll-seconds", "0.5") as address:
        with ServingClient(address, timeout_s=30) as client:
            client.wait_until_ready(f"{MODEL}-search", timeout_s=120)
            with web_process("--server", address, "--model", MODEL,
                             "--model-base-path", config.serving_root,
                             "--top-k", str(TOP_K),
                             "--max-upload-mb", str(UPLOAD_LIMIT_MB)) as url:
                yield request.param, config, client, url


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("CMGAN_TEST_ARTIFACTS")
                  or tmp_path_factory.mktemp("web-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nsearch page screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through /usr/bin/chromedriver (Selenium Manager never runs: the
    driver path is given, so nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run scripts/setup.sh (installs the Debian "
                    "packages chromium and chromium-driver)")
    profile = tempfile.mkdtemp(prefix="cmgan-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------- page helpers
def _is_stale(element) -> bool:
    """True once the page holding ``element`` is gone. Chromium sometimes reports a node of a
    navigated-away document as an "unhandled inspector error" instead of a stale reference."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in str(error):
            return True
        raise
    return False


def submit(driver, form_id: str, fill=None) -> None:
    """Fills and submits one form, waits for the next page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    form = driver.find_element(By.ID, form_id)
    if fill:
        fill(form)
    old = driver.find_element(By.TAG_NAME, "html")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(lambda _: _is_stale(old))
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def results(driver, table_id: str) -> list[tuple[str, str, float]]:
    """(modality, id, score) of each row of a results table."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tr.hit")
    return [(r.get_attribute("data-modality"), r.get_attribute("data-id"),
             float(r.get_attribute("data-score"))) for r in rows]


def error_text(driver) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, "error")
    return found[0].text if found else ""


def screenshot(driver, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > 600
    print(f"screenshot: {path}")
    return path


def expected(client: ServingClient, query, kind: str, query_modality: str,
             exclude=None) -> tuple[list, list]:
    """What the gRPC client returns for the same query: (other modality, both merged)."""
    per_target = {}
    for target in ("image", "text"):
        got = client.search(MODEL, query, query_kind=kind, target=target, k=TOP_K + 1)
        per_target[target] = [(target, i, float(s)) for i, s in zip(got.ids[0], got.scores[0])
                              if (target, i) != exclude]
    other = "text" if query_modality == "image" else "image"
    both = sorted(per_target["image"] + per_target["text"], key=lambda h: -h[2])[:TOP_K]
    return per_target[other][:TOP_K], both


def assert_same(shown: list, wanted: list) -> None:
    assert [(m, i) for m, i, _ in shown] == [(m, i) for m, i, _ in wanted]
    assert np.allclose([s for *_, s in shown], [s for *_, s in wanted], atol=1e-5)


def stored_query(config, item_id: str) -> tuple[str, object]:
    """(query kind, value) of a gallery item's text as the pipeline stored it (the test split
    of the ExampleGen's Examples artifact, the gallery's source), found independently of the
    page: float features for a features model, the UTF-8 text for a raw one."""
    import tensorflow as tf

    from pipeline.metadata import latest_run_executions, output_artifacts

    executions = latest_run_executions(config.metadata_path, config.pipeline_name)
    node = next(n for n in executions if n.endswith("ExampleGen"))
    uri = output_artifacts(config.metadata_path, executions[node].id)["examples"][0].uri
    files = tf.io.gfile.glob(os.path.join(uri, "Split-test", "*"))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        if feature["id"].bytes_list.value[0].decode() == item_id:
            text = feature["text"]
            if text.WhichOneof("kind") == "bytes_list":
                return "text_string", [text.bytes_list.value[0]]
            return "text", np.array(text.float_list.value, np.float32)[None, :]
    raise AssertionError(f"{item_id} is not in the test split")


# --------------------------------------------------------------------------- tests
def test_page_says_which_queries_the_model_answers(served, browser, artifacts):
    from selenium.webdriver.common.by import By

    kind, _, client, url = served
    browser.get(url)
    supported = browser.find_element(By.ID, "supported").text
    signatures = client.signatures(f"{MODEL}-search")
    assert ("search_text_string" in signatures) == (kind == "raw")
    text_box = browser.find_element(By.NAME, "text")
    upload = browser.find_element(By.NAME, "image")
    if kind == "raw":
        assert supported == ("This model answers queries by a sentence, an image, "
                             "a gallery item.")
        assert text_box.is_enabled() and upload.is_enabled()
    else:
        assert supported == "This model answers queries by a gallery item."
        assert not text_box.is_enabled() and not upload.is_enabled()
        notes = browser.find_element(By.ID, "text-form").text
        assert "not supported by this model: it was trained on feature vectors" in notes
    screenshot(browser, artifacts, f"{kind}-start")


def test_gallery_item_query_shows_the_clients_results(served, browser, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    kind, config, client, url = served
    browser.get(url)
    select = Select(browser.find_element(By.NAME, "item"))
    values = [o.get_attribute("value") for o in select.options]
    item = next(v for v in values if v.startswith("text:"))
    submit(browser, "item-form", lambda form: Select(
        form.find_element(By.NAME, "item")).select_by_value(item))
    assert error_text(browser) == ""
    modality, item_id = item.split(":", 1)
    query_kind, query = stored_query(config, item_id)
    other, both = expected(client, query, query_kind, modality, exclude=(modality, item_id))
    assert_same(results(browser, "results-other"), other)
    assert_same(results(browser, "results-both"), both)
    assert all(m == "image" for m, _, _ in results(browser, "results-other"))
    assert Select(browser.find_element(By.NAME, "item")).first_selected_option.get_attribute(
        "value") == item
    # Relevance marks follow the labels the server returned.
    query_label = int(client.search(MODEL, query, query_kind=query_kind, target=modality,
                                    k=1).labels[0][0])
    for row in browser.find_elements(By.CSS_SELECTOR, "#results-other tr.hit"):
        assert ("relevant" in row.get_attribute("class").split()) == (
            int(row.get_attribute("data-label")) == query_label)
    screenshot(browser, artifacts, f"{kind}-item-query")

    # A result's "search with this" link runs that item as the next query.
    first = browser.find_element(By.CSS_SELECTOR, "#results-other tr.hit a")
    first_id = browser.find_element(By.CSS_SELECTOR, "#results-other tr.hit").get_attribute(
        "data-id")
    first.click()
    assert first_id in browser.find_element(By.ID, "query").text
    assert results(browser, "results-other")[0][0] == "text"


def test_sentence_query(served, browser, artifacts):
    from selenium.webdriver.common.by import By

    kind, _, client, url = served
    browser.get(url)
    sentence = "a red circle with stripes <b>&amp;</b>"
    if kind != "raw":  # the form is disabled; a hand-made request gets the same explanation
        browser.get(url + "search?kind=text&text=" + "a%20red%20circle")
        assert error_text(browser).startswith("Sentence queries are not supported by this "
                                              "model")
        assert not results(browser, "results-other")
        return
    submit(browser, "text-form", lambda form: form.find_element(By.NAME, "text")
           .send_keys(sentence))
    assert error_text(browser) == ""
    other, both = expected(client, [sentence], "text_string", "text")
    assert_same(results(browser, "results-other"), other)
    assert_same(results(browser, "results-both"), both)
    # The sentence is shown as text, not markup.
    assert sentence in browser.find_element(By.ID, "query").text
    screenshot(browser, artifacts, f"{kind}-text-query")


def upload(browser, url: str, path: Path, enable: bool) -> None:
    """Submits ``path`` with the image form; ``enable`` first re-enables a disabled form, as a
    hand-made request would, so the server's own checks are exercised."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    if enable:
        browser.execute_script(
            "document.querySelectorAll('#image-form input, #image-form button')"
            ".forEach(e => e.disabled = false)")
    submit(browser, "image-form", lambda form: form.find_element(By.NAME, "image")
           .send_keys(str(path)))


def test_image_upload_query_and_bad_uploads(served, browser, artifacts, tmp_path):
    from selenium.webdriver.common.by import By

    kind, _, client, url = served
    raw = kind == "raw"
    browser.get(url)
    assert browser.find_element(By.NAME, "image").is_enabled() == raw
    if not raw:
        assert "Image queries are not supported by this model" in browser.find_element(
            By.ID, "image-form").text

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"this is not an image\n" * 20)
    too_large = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(too_large)
    assert too_large.stat().st_size > UPLOAD_LIMIT_MB * 2**20
    far_too_large = tmp_path / "huge.png"  # refused from Content-Length alone, never parsed
    noise = np.random.default_rng(1).integers(0, 256, (320, 320, 3), dtype=np.uint8)
    Image.fromarray(noise).save(far_too_large)
    for path, message in ((not_an_image, "The uploaded file is not an image that can be read"),
                          (too_large, "The image is too large: "),
                          (far_too_large, "The upload is too large: ")):
        upload(browser, url, path, enable=not raw)
        assert message in error_text(browser)
        assert "Traceback" not in browser.page_source
        assert not results(browser, "results-other")
        screenshot(browser, artifacts, f"{kind}-bad-upload-{path.stem}")

    picture = tmp_path / "query.png"
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[8:24, 8:24] = (200, 40, 40)
    Image.fromarray(pixels).save(picture)
    upload(browser, url, picture, enable=not raw)
    if not raw:
        assert error_text(browser).startswith("Image queries are not supported by this model")
        assert not results(browser, "results-other")
        return
    assert error_text(browser) == ""
    other, both = expected(client, [picture.read_bytes()], "image_bytes", "image")
    assert_same(results(browser, "results-other"), other)
    assert_same(results(browser, "results-both"), both)
    screenshot(browser, artifacts, f"{kind}-image-query")


def test_serve_with_web_port_serves_the_page_beside_the_grpc_server(served):
    import urllib.request

    _, config, _, _ = served
    with cmgan_process("serve", "search page on ", "--port", "0",
                       "--web-port", "0", "--model-base-path", config.serving_root,
                       "--model-name", MODEL) as url:
        page = urllib.request.urlopen(url, timeout=60).read().decode()
    assert "CM-GAN search" in page and "gallery:" in page
