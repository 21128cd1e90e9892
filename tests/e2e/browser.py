"""Label Studio 1.23.2's labeling screen in a real Chromium, driven by Playwright, for the browser tests.

Debian's chromium (`apt-get install chromium`; tests/run.sh installs it) is launched by path:
Playwright's own browser download is not reachable from these machines. Each `Screen` is a fresh
browser profile logged in as the harness's user. Positions on the image are fractions of the
image's width and height, as the screen shows it (the image fills the canvas).

Selectors are Label Studio's own: tool buttons by their aria-label ("brush-tool", "polygon-tool",
"rectangle-tool", "key-point-tool"), the smart tools in the flyout of the toolbar's "Auto-Detect"
button, and the bottom bar's data-testid attributes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
INTERACTIVE = "interactive-annotating"


def chromium_path() -> Path:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `apt-get install -y chromium` (tests/run.sh does it)")
    return CHROMIUM


class Browser:
    """One Chromium for the test session; `screen()` opens a fresh profile logged in to Label Studio."""

    def __init__(self, workdir: Path):
        from playwright.sync_api import sync_playwright

        self.workdir = workdir
        self._playwright = sync_playwright().start()
        self._profiles = 0
        self._contexts = []

    def screen(self, label_studio, user: str, password: str) -> "Screen":
        self._profiles += 1
        profile = self.workdir / f"profile-{self._profiles}"
        context = self._playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(chromium_path()), args=CHROMIUM_ARGS, headless=True,
            viewport=VIEWPORT)
        context.set_default_timeout(30_000)
        self._contexts.append(context)
        screen = Screen(context, label_studio.url)
        screen.login(user, password)
        return screen

    def close(self) -> None:
        for context in self._contexts:
            try:
                context.close()
            except Exception:  # an already crashed browser must not hide the test's own failure
                pass
        self._playwright.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Screen:
    """Label Studio's pages in one browser profile."""

    def __init__(self, context, base_url: str):
        self.context = context
        self.page = context.pages[0] if context.pages else context.new_page()
        self.base_url = base_url
        self.interactive_calls: list[dict] = []
        self.page.on("request", self._on_request)

    def _on_request(self, request) -> None:
        if INTERACTIVE in request.url:
            self.interactive_calls.append(json.loads(request.post_data or "{}"))

    # ------------------------------------------------------------ pages

    def login(self, user: str, password: str) -> None:
        self.page.goto(f"{self.base_url}/user/login/")
        self.page.fill("input[name=email]", user)
        self.page.fill("input[name=password]", password)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(lambda url: "/user/login" not in url)

    def open_task(self, project: int, task: int) -> None:
        """The Data Manager with the task open in its labeling screen, image loaded."""
        self.page.goto(f"{self.base_url}/projects/{project}/data?task={task}")
        self.canvas.wait_for(state="visible")
        self.page.locator(".lsf-label", has_text=self.first_label_text()).first.wait_for()
        self.page.wait_for_load_state("networkidle")

    def data_manager(self, project: int) -> None:
        self.page.goto(f"{self.base_url}/projects/{project}/data")
        self.page.locator(".dm-table__row-wrapper, [class*=table] [class*=row]").first.wait_for()

    def reload(self) -> None:
        self.page.reload()
        self.canvas.wait_for(state="visible")
        self.page.wait_for_load_state("networkidle")

    def first_label_text(self) -> str:
        return "Cat"

    # ------------------------------------------------------------ the labeling screen

    @property
    def canvas(self):
        return self.page.locator(".konvajs-content").first

    def at(self, fx: float, fy: float) -> tuple[float, float]:
        """Page coordinates of a point given as fractions of the image's width and height."""
        box = self.canvas.bounding_box()
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    def switch(self, testid: str, on: bool) -> None:
        toggle = self.page.get_by_test_id(testid)
        if toggle.is_checked() != on:
            toggle.locator("xpath=ancestor::label[1]").click()
        assert toggle.is_checked() == on

    def auto_annotation(self, on: bool = True) -> None:
        self.switch("bottombar-auto-annotation-toggle", on)

    def auto_accept(self, on: bool = True) -> None:
        self.switch("bottombar-auto-accept-toggle", on)

    def pick_label(self, name: str) -> None:
        label = self.page.locator(".lsf-label", has_text=name).first
        if "lsf-label_selected" not in (label.get_attribute("class") or ""):
            label.click()

    def label_selected(self, name: str) -> bool:
        return "lsf-label_selected" in (self.page.locator(".lsf-label", has_text=name).first.get_attribute("class") or "")

    def tool_names(self) -> list[str]:
        """The toolbar's tools as their aria-labels, smart ones (under Auto-Detect) marked with "smart:"."""
        return self.page.evaluate("""() => Array.from(document.querySelectorAll('button.lsf-tool[aria-label]'))
            .map(b => (b.classList.contains('lsf-tool_smart') ? 'smart:' : '') + b.getAttribute('aria-label'))""")

    def pick_tool(self, name: str) -> None:
        """A plain tool of the toolbar: "brush-tool", "polygon-tool", "eraser", "move-tool"."""
        self.page.locator(f"button.lsf-tool:not(.lsf-tool_smart)[aria-label={name}]").click()

    def pick_smart_tool(self, name: str) -> None:
        """A smart tool from the Auto-Detect flyout: "rectangle-tool", "key-point-tool"."""
        self.page.locator(".lsf-tool_smart", has_text="Auto-Detect").first.hover()
        self.page.locator(f".lsf-toolbar__smart button[aria-label={name}]").click()

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        (x0, y0), (x1, y1) = self.at(*start), self.at(*end)
        self.page.mouse.move(x0, y0)
        self.page.mouse.down()
        self.page.mouse.move(x1, y1, steps=8)
        self.page.mouse.up()

    def click(self, point: tuple[float, float], alt: bool = False) -> None:
        x, y = self.at(*point)
        if alt:
            self.page.keyboard.down("Alt")
        self.page.mouse.click(x, y)
        if alt:
            self.page.keyboard.up("Alt")

    def polygon(self, points: list[tuple[float, float]]) -> None:
        """Clicks each vertex, then the first again to close it."""
        for point in [*points, points[0]]:
            self.click(point)
            self.page.wait_for_timeout(250)  # two quick clicks would be a double click

    def interactive(self, gesture) -> dict:
        """Runs `gesture` and returns Label Studio's answer to the interactive call it makes."""
        with self.page.expect_response(lambda r: INTERACTIVE in r.url, timeout=120_000) as info:
            gesture()
        response = info.value
        assert response.status == 200, response.text()
        return response.json()

    def suggestions_pending(self) -> bool:
        return self.page.get_by_test_id("bottombar-accept-suggestions-button").is_visible()

    def accept_suggestions(self) -> None:
        self.page.get_by_test_id("bottombar-accept-suggestions-button").click()

    def submit(self) -> None:
        button = self.page.get_by_test_id("bottombar-submit-button")
        with self.page.expect_response(lambda r: "/annotations" in r.url and r.request.method == "POST"):
            button.click()

    def region_rows(self) -> list[str]:
        """The Regions panel's rows as text."""
        return [t.strip() for t in self.page.locator(".lsf-outliner-item, .lsf-tree-node-content").all_inner_texts()]

    def tabs(self) -> list[str]:
        """The annotation and prediction tabs above the image, as text."""
        return [" ".join(t.split()) for t in self.page.locator(".lsf-annotation-button").all_inner_texts()]

    def open_tab(self, text: str) -> None:
        self.page.locator(".lsf-annotation-button", has_text=text).first.click()
        self.page.wait_for_timeout(500)

    def info_panel_text(self) -> str:
        return " ".join(self.page.locator(".lsf-detailed-region, [class*=details]").first.inner_text().split())

    # ------------------------------------------------------------ pictures

    def screenshot(self, path: Path, element: str | None = None, width: int = 900) -> Path:
        """A PNG of the page (or of one element), scaled down to `width` pixels, in few colours."""
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        target = self.page.locator(element).first if element else self.page
        target.screenshot(path=str(path))
        image = Image.open(path).convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        return path
