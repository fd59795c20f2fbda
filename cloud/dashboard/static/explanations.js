// wearfed dashboard: the "Explanations" panel (roles of model.explain). Shows the promoted model's global importance
// per input family and its local explanations of hypo and low-confidence forecasts, from
// GET /v1/models/{v}/explanations (computed by the cloud on its synthetic validation cohort, cloud/explainer.py).
// dashboard.js calls WFExplanations.load with its helpers when the "models" topic changes; values are text only.
"use strict";

window.WFExplanations = Object.freeze({
  async load({get, el, num}) {
    const box = document.getElementById("explanations-body");
    const promoted = await get("/v1/models/promoted");
    const doc = await get(`/v1/models/${promoted.version}/explanations`);
    if (doc.status !== "computed") {
      box.replaceChildren(el("p", {class: "muted", text: `v${promoted.version}: ${doc.status} (${doc.reason})`}));
      return;
    }
    // most important first (the stored JSON keeps its keys sorted by name)
    const fams = Object.keys(doc.global.families)
      .sort((a, b) => doc.global.families[b].mean_abs_mgdl - doc.global.families[a].mean_abs_mgdl);
    const globalRows = fams.map((f) => {
      const v = doc.global.families[f];
      return el("tr", {"data-family": f}, el("td", {text: f}), el("td", {text: num(v.mean_abs_mgdl, 3)}),
                el("td", {text: `${(100 * v.share).toFixed(1)} %`}));
    });
    const loc = doc.local;
    const localRows = loc.items.slice(0, 20).map((it) => el("tr", {},
      el("td", {text: String(it.window)}), el("td", {text: it.group || "–"}), el("td", {text: it.reasons.join(", ")}),
      el("td", {text: num(it.last_cgm_mgdl, 4)}), el("td", {text: num(it.forecast30_mgdl, 4)}),
      ...fams.map((f) => el("td", {text: num(it.families[f], 3)})),
      el("td", {text: it.top_inputs.length ? it.top_inputs[0].input : "–"})));
    box.replaceChildren(
      el("p", {class: "note", text: `Model v${doc.model_version}: ${doc.method} (${doc.library}) of the +${doc.horizon_min} ` +
        `min forecast on ${doc.data}, against ${doc.baseline}; mg/dL, adding up to the forecast minus the baseline's.`}),
      el("table", {id: "explain-global"},
         el("thead", {}, el("tr", {}, el("th", {text: "input family"}), el("th", {text: "mean |attribution| mg/dL"}),
                              el("th", {text: "share"}))),
         el("tbody", {}, ...globalRows)),
      el("p", {class: "note", text: `Local: ${loc.kept} kept of ${loc.hypo_forecasts} hypo and ` +
        `${loc.low_confidence_forecasts} low-confidence forecasts (${loc.criteria}).`}),
      el("table", {id: "explain-local"},
         el("thead", {}, el("tr", {}, ...["window", "group", "why", "last CGM", "forecast +30", ...fams, "top input"]
           .map((h) => el("th", {text: h})))),
         el("tbody", {}, ...localRows)));
  },
});
