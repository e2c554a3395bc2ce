"""The web page at ``/`` in a real headless browser (Debian's chromium + chromedriver through selenium) against
``python -m minisr.serve`` on 127.0.0.1: models load, an image chosen with the file input is upscaled, the
before/after slider moves the split, the download link holds exactly what POST /upscale answers, and an image
dropped on the page (a real drop event) is upscaled with another model and scale. Skips only when chromium or
chromedriver is not installed. ``MINISR_SCREENSHOT=path.png`` keeps the screenshot (docs/serve-page.png is one)."""

import base64
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

selenium = pytest.importorskip("selenium")
pytest.importorskip("fastapi")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from test_serve import decode_png, free_port, get, upload, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed")


def test_page_upscales_slides_downloads_and_takes_drops(tmp_path):
    from skimage import data as skdata

    from minisr.data import imresize, write_image

    lr = np.clip(imresize(skdata.astronaut()[10:266, 140:396], 0.5), 0, 255).astype(np.uint8)  # 128 x 128 face
    img = tmp_path / "astronaut.png"
    write_image(img, lr)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "minisr.serve", "--port", str(port), "--models", "bicubic",
                             "srcnn-x2", "--log-level", "warning"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900"):
        opts.add_argument(flag)
    driver = None
    try:
        wait_until(lambda: proc.poll() is not None or get(url + "/health")["status"] == "ok", 90, 0.2,
                   what="python -m minisr.serve")
        assert proc.poll() is None
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
        driver.set_page_load_timeout(30)
        wait = WebDriverWait(driver, 60)
        driver.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Ready"))
        assert Select(driver.find_element(By.ID, "model")).first_selected_option.text == "srcnn-x2"
        assert [o.text for o in Select(driver.find_element(By.ID, "scale")).options] == ["x2", "x4"]

        driver.find_element(By.ID, "file").send_keys(str(img))
        wait.until(lambda d: d.find_element(By.ID, "download").is_displayed())
        after = driver.find_element(By.ID, "after")
        assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", after) \
            == [256, 256]
        download = driver.find_element(By.ID, "download")
        assert download.get_attribute("download") == "astronaut_x2.png"
        # the download link holds exactly what the API answers
        got = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {
              let s = ""; for (const x of new Uint8Array(b)) s += String.fromCharCode(x); done(btoa(s)); });
        """, download.get_attribute("href"))
        status, _, expected = upload(url, "astronaut.png", img.read_bytes(), {"model": "srcnn-x2", "scale": "2"})
        assert status == 200
        np.testing.assert_array_equal(decode_png(base64.b64decode(got)), decode_png(expected))

        driver.execute_script("const s = document.getElementById('slider'); s.value = 30;"
                              "s.dispatchEvent(new Event('input'));")
        assert "30%" in driver.find_element(By.ID, "afterClip").value_of_css_property("clip-path")
        assert driver.find_element(By.ID, "handle").value_of_css_property("left") != "50%"
        time.sleep(0.2)
        driver.save_screenshot(str(tmp_path / "page.png"))
        if os.environ.get("MINISR_SCREENSHOT"):
            shutil.copy(tmp_path / "page.png", os.environ["MINISR_SCREENSHOT"])

        # a drop: bicubic x3 on the same picture
        Select(driver.find_element(By.ID, "model")).select_by_visible_text("bicubic")
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Done: astronaut.png with bicubic"))
        Select(driver.find_element(By.ID, "scale")).select_by_visible_text("x2")
        driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then(r => r.blob()).then(b => {
              const dt = new DataTransfer();
              dt.items.add(new File([b], "dropped.png", {type: "image/png"}));
              document.getElementById("scale").value = "3";
              const ev = new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true});
              document.getElementById("drop").dispatchEvent(ev); done(); });
        """, driver.find_element(By.ID, "before").get_attribute("src"))
        wait.until(lambda d: d.find_element(By.ID, "status").text == "Done: dropped.png with bicubic x3.")
        assert driver.execute_script("return document.getElementById('after').naturalWidth") == 384
        assert driver.find_element(By.ID, "download").get_attribute("download") == "dropped_x3.png"
        # an error is shown, not swallowed: a file that is not an image
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        driver.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda d: "is not an image" in d.find_element(By.ID, "status").text)
        assert "400" in driver.find_element(By.ID, "status").text
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(30)
