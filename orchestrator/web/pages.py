"""The console's HTML: server-rendered shells that console.js fills from the JSON API.

No inline scripts (the Content-Security-Policy allows scripts from the console only);
what a page's script needs (the campaign's name) travels in ``data-`` attributes.
"""

from __future__ import annotations

from html import escape

from orchestrator.web.forms import COMMON_REFERENCES, NUMBERS

ASSET_VERSION = "1"  # bump to make browsers fetch changed static files


def _layout(title: str, body: str, *, page: str, auth: bool, data: dict | None = None,
            plotly: bool = False) -> str:
    attrs = "".join(f' data-{k}="{escape(str(v))}"' for k, v in (data or {}).items())
    nav = ""
    if page != "login":
        logout = ('<form method="post" action="/logout" class="logout">'
                  '<button type="submit">Log out</button></form>') if auth else ""
        nav = (f'<header><a class="brand" href="/">nnmd console</a><nav>'
               f'<a href="/"{" class=current" if page == "list" else ""}>Campaigns</a>'
               f'<a href="/new"{" class=current" if page == "new" else ""}>New campaign</a>'
               f'</nav>{logout}</header>')
    scripts = ""
    if plotly:
        scripts += '<script src="/static/plotly.min.js" defer></script>'
    scripts += f'<script src="/static/console.js?v={ASSET_VERSION}" defer></script>'
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)} - nnmd console</title>'
            f'<link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="/static/console.css?v={ASSET_VERSION}">{scripts}'
            f'</head><body data-page="{page}"{attrs}>{nav}<main>{body}</main></body></html>')


def login_page(next_path: str = "/", error: str = "") -> str:
    err = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        '<section class="login card"><h1>nnmd console</h1>'
        '<p>Log in with the coordinator\'s token (the one in <code>$NNMD_TOKEN</code> or '
        'its token file).</p>'
        f'{err}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<label for="token">Token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required autofocus>'
        '<button type="submit">Log in</button></form></section>')
    return _layout("Log in", body, page="login", auth=True)


def list_page(auth: bool, coordinator: str) -> str:
    body = (
        '<div class="titlebar"><h1>Campaigns</h1>'
        '<a class="button" href="/new">New campaign</a></div>'
        f'<p class="muted">Coordinator <code>{escape(coordinator)}</code>; '
        'refreshed every 3 s. <span id="list-status"></span></p>'
        '<div id="list-error" class="error" role="alert" hidden></div>'
        '<table id="campaigns" class="grid"><thead><tr>'
        '<th>campaign</th><th>state</th><th>chains</th><th>steps (done/total)</th>'
        '<th>acceptance</th><th>labels</th><th>model</th><th>reference</th></tr></thead>'
        '<tbody><tr><td colspan="8" class="muted">loading...</td></tr></tbody></table>')
    return _layout("Campaigns", body, page="list", auth=auth)


def _input(name: str, label: str, *, placeholder: str = "", kind: str = "text",
           extra: str = "", hint: str = "") -> str:
    hint_html = f'<small class="hint">{escape(hint)}</small>' if hint else ""
    return (f'<div class="field" data-field="{name}"><label for="f-{name}">{escape(label)}'
            f'</label><input id="f-{name}" name="{name}" type="{kind}" '
            f'placeholder="{escape(placeholder)}"{extra}>{hint_html}'
            f'<div class="field-error" id="err-{name}" role="alert" hidden></div></div>')


def new_page(auth: bool, defaults: dict) -> str:
    """defaults: the spec's default values (placeholders: empty inputs leave them be)."""
    def ph(key):
        value = defaults.get(key)
        return "" if value is None else f"default {value:g}" if isinstance(value, float) \
            else f"default {value}"

    options = "".join(f'<option value="{escape(v)}">{escape(label)}</option>'
                      for v, label in COMMON_REFERENCES)
    numbers = "".join(
        _input(key, label, placeholder=ph(key), kind="text",
               extra=' inputmode="decimal"' if kind is not int else ' inputmode="numeric"')
        for key, (kind, label) in NUMBERS.items() if key != "pressure")
    body = (
        '<h1>New campaign</h1>'
        '<form id="new-campaign" class="card" novalidate>'
        '<div id="form-error" class="error" role="alert" hidden></div>'
        '<fieldset><legend>What</legend>'
        + _input("name", "Campaign name", placeholder="e.g. cu-emt-600K",
                 hint="letters, digits, '.', '_' or '-'")
        + '<div class="field" data-field="reference"><label for="f-reference">Reference'
          '</label><div class="row"><select id="f-reference-choice" aria-label="common '
          f'references"><option value="">choose...</option>{options}</select>'
          '<input id="f-reference" name="reference" type="text" '
          'placeholder="emt | qe | chgnet | lammps:... | ase:..."></div>'
          '<div class="field-error" id="err-reference" role="alert" hidden></div></div>'
        + _input("structure", "Structure file (any format ASE reads)", kind="file",
                 hint="e.g. .xyz, .extxyz, .cif, POSCAR; optional with a QE input")
        + _input("qe_input", "QE input (pw.x) for the reference qe", kind="file",
                 hint="its structure is the start unless a structure file is given")
        + '</fieldset><fieldset><legend>Conditions</legend>'
        + numbers
        + '<div class="field" data-field="ensemble"><label for="f-ensemble">Ensemble</label>'
          '<select id="f-ensemble" name="ensemble"><option value="">'
          f'{escape(ph("ensemble") or "default")}</option><option value="nvt">nvt</option>'
          '<option value="npt">npt</option></select>'
          '<div class="field-error" id="err-ensemble" role="alert" hidden></div></div>'
        + _input("pressure", "Pressure (GPa, npt)", placeholder=ph("pressure_gpa"),
                 extra=' inputmode="decimal"')
        + _input("store", "Store (optional)", placeholder="default: the coordinator's store",
                 hint="a folder or fsspec URL on the coordinator's side")
        + '</fieldset><fieldset><legend>Start from a YAML spec (optional)</legend>'
          '<p class="muted">Fields filled in above override the spec\'s. See '
          '<code>examples/campaigns/*.yaml</code> for the fields.</p>'
        + _input("spec_file", "Spec file (YAML)", kind="file")
        + '<div class="field" data-field="spec_yaml"><label for="f-spec_yaml">Spec (YAML)'
          '</label><textarea id="f-spec_yaml" name="spec_yaml" rows="10" spellcheck="false" '
          'placeholder="train:&#10;  hidden: [16, 16]&#10;  max_epochs: 60&#10;'
          'bootstrap_steps: 30"></textarea>'
          '<div class="field-error" id="err-spec_yaml" role="alert" hidden></div></div>'
        + '</fieldset><div class="actions"><button type="submit" id="start-button">'
          'Start campaign</button><span id="form-status" class="muted"></span></div>'
          '</form>')
    return _layout("New campaign", body, page="new", auth=auth)


def campaign_page(auth: bool, name: str) -> str:
    n = escape(name)
    charts = "".join(
        f'<div class="chart card"><h3>{escape(title)}</h3><div id="chart-{cid}" '
        f'class="plot"></div></div>'
        for cid, title in (("acceptance", "Acceptance rate"), ("nmd", "MD steps per move (n_md)"),
                           ("energy", "Reference energy (eV)"), ("volume", "Volume (Å³)"),
                           ("labels", "Dataset: labels"),
                           ("learning-energy", "Learning curve: energy RMSE (meV/atom)"),
                           ("learning-forces", "Learning curve: force RMSE (meV/Å)")))
    exports = "".join(
        f'<a class="button export disabled" aria-disabled="true" id="export-{fmt}" '
        f'data-href="/api/campaigns/{n}/export/{fmt}" download>{escape(label)}</a>'
        for fmt, label in (("nnmd", "model.nnmd"), ("sannp", "ffield.sannp"),
                           ("lammps", "LAMMPS bundle (.zip)")))
    body = (
        f'<div class="titlebar"><h1 id="campaign-name">{n}</h1>'
        '<span id="state" class="state">loading</span>'
        '<button id="stop-button" type="button" class="danger" disabled>Stop</button></div>'
        '<p id="message" class="muted"></p>'
        '<div id="page-error" class="error" role="alert" hidden></div>'
        '<section class="summary" id="summary"></section>'
        '<section class="card exports"><h3>Export</h3>'
        f'{exports}<a class="button export" id="export-report" '
        f'href="/api/campaigns/{n}/report.html" download>report.html</a>'
        '<span class="muted" id="export-note">models appear after the first training</span>'
        '</section>'
        '<section class="card"><div class="titlebar"><h3>Chains</h3><div class="pager">'
        '<button type="button" id="page-prev">&larr; prev</button>'
        '<span id="page-info"></span>'
        '<button type="button" id="page-next">next &rarr;</button></div></div>'
        '<p class="muted">Per-chain traces below show the chains of this page; the '
        'band is the mean, minimum and maximum over all chains.</p>'
        '<table id="chains" class="grid"><thead><tr><th>chain</th><th>step</th>'
        '<th>acceptance</th><th>n_md</th><th>phase</th><th>E_ref (eV)</th>'
        '<th>V (Å³)</th><th>last move</th></tr></thead><tbody></tbody></table></section>'
        f'<section class="charts">{charts}</section>'
        '<section class="card"><div class="titlebar"><h3>Model versions</h3>'
        '<label>learning curve of <select id="model-select"></select></label></div>'
        '<table id="models" class="grid"><thead><tr><th>version</th><th>labels</th>'
        '<th>structures</th><th>train (s)</th><th>E RMSE (meV/atom)</th>'
        '<th>F RMSE (meV/Å)</th><th>held-out n</th><th>held-out E</th><th>held-out F</th>'
        '</tr></thead><tbody></tbody></table></section>'
        '<section class="card"><h3>Settings</h3><table id="settings" class="kv"><tbody>'
        '</tbody></table></section>'
        '<section class="card"><h3>Events</h3><ol id="events" class="events" reversed></ol>'
        '</section>')
    return _layout(name, body, page="campaign", auth=auth, data={"campaign": name},
                   plotly=True)
