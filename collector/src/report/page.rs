//! The report's page: HTML built section by section, its charts as Vega-Lite specs rendered in
//! the browser by vega-embed, whose JavaScript (Vega, Vega-Lite, vega-embed, vendored from
//! their npm packages in collector/assets/vega/ by scripts/vendor-vega.sh) is embedded in the
//! page: one file that opens offline, with hover values, legend toggles, zoom and each chart's
//! SVG/PNG export and source.

use std::fmt::Write;

use base64::Engine;
use serde_json::Value;

const VEGA: &str = include_str!("../../assets/vega/vega.min.js");
const VEGA_LITE: &str = include_str!("../../assets/vega/vega-lite.min.js");
const VEGA_EMBED: &str = include_str!("../../assets/vega/vega-embed.min.js");

/// HTML-escapes text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An `<img>` of PNG bytes as a data URI.
pub fn png_img(png: &[u8], width: u32, height: u32, alt: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(png);
    format!(
        "<img src=\"data:image/png;base64,{data}\" width={width} height={height} alt=\"{}\">",
        escape(alt)
    )
}

/// The page being built.
#[derive(Default)]
pub struct Page {
    body: String,
    charts: Vec<Value>,
}

impl Page {
    /// Appends HTML as it is.
    pub fn raw(&mut self, html: &str) {
        self.body.push_str(html);
    }

    pub fn heading(&mut self, level: u8, text: &str) {
        let _ = write!(self.body, "<h{level}>{}</h{level}>", escape(text));
    }

    /// A paragraph of explanation.
    pub fn note(&mut self, text: &str) {
        let _ = write!(self.body, "<p class=note>{}</p>", escape(text));
    }

    /// A chart from a Vega-Lite spec, with its caption.
    pub fn chart(&mut self, spec: Value, caption: &str) {
        let id = self.charts.len();
        let _ = write!(
            self.body,
            "<figure><div class=chart id=chart-{id}></div><figcaption>{}</figcaption></figure>",
            escape(caption)
        );
        self.charts.push(spec);
    }

    /// The whole page.
    pub fn html(self, title: &str) -> String {
        let specs = serde_json::to_string(&self.charts).expect("specs serialise");
        // A spec is data inside a script: `</` must not end the script early.
        let specs = specs.replace("</", "<\\/");
        format!(
            "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
             <title>{}</title><style>{STYLE}</style></head><body>{}\
             <script>{VEGA}</script><script>{VEGA_LITE}</script><script>{VEGA_EMBED}</script>\
             <script>const SPECS = {specs};\n{SCRIPT}</script></body></html>\n",
            escape(title),
            self.body
        )
    }
}

/// Renders every chart (SVG, so text stays text) and makes tables of class `sortable` sortable
/// by a click on a column header (numbers by their `data-v`, text in natural order). A chart
/// that fails to render shows its error in its place.
const SCRIPT: &str = r#"
const OPTIONS = {renderer: "svg", actions: {export: true, source: true, compiled: false, editor: false}};
SPECS.forEach((spec, i) => {
  const el = document.getElementById("chart-" + i);
  vegaEmbed(el, spec, OPTIONS).catch(e => {
    el.textContent = "chart failed: " + e;
    el.classList.add("failed");
    console.error(e);
  });
});
const natural = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("th").forEach((th, col) => {
    th.title = "sort";
    th.addEventListener("click", () => {
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      const up = th.dataset.dir !== "up";
      const key = r => r.cells[col];
      rows.sort((a, b) => {
        const [x, y] = [key(a), key(b)];
        const [u, v] = [parseFloat(x.dataset.v), parseFloat(y.dataset.v)];
        const c = !isNaN(u) && !isNaN(v) ? u - v : natural.compare(x.textContent, y.textContent);
        return up ? c : -c;
      });
      table.querySelectorAll("th").forEach(h => delete h.dataset.dir);
      th.dataset.dir = up ? "up" : "down";
      rows.forEach(r => body.appendChild(r));
    });
  });
});
"#;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px auto;color:#222;max-width:1320px;padding:0 16px}\
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}h3{margin-top:28px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}\
th{background:#f3f3f3;vertical-align:bottom}td:first-child,th:first-child{text-align:left}table.sortable th{cursor:pointer}\
th[data-dir=up]::after{content:' \\25B2'}th[data-dir=down]::after{content:' \\25BC'}\
.best{font-weight:bold}.sd,.n,.ci{color:#666;font-size:11px;font-weight:normal}.ci{display:block}.note{color:#555;font-size:13px;max-width:1000px}\
.missing{color:#999}figure{margin:8px 0 20px}figcaption{color:#555;font-size:12px;max-width:1000px}\
.chart.failed{color:#b00}.wrap{overflow-x:auto}\
.lrp td{vertical-align:top;text-align:left;width:128px}.lrp td:first-child{width:auto}.lrp img{display:block}\
.lrp .bar td{border:none;padding:0 4px;width:auto;font-size:11px}.lrp .bar .mid{vertical-align:middle}\
.right{color:#1a7f37}.wrong{color:#c0392b}.labels{font-size:12px;line-height:1.35}\
.up{background:#d8f0dd}.down{background:#f8dcd8}.same{background:#f3f3f3}";
