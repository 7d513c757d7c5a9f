// Class colours: the Okabe-Ito palette (Okabe & Ito 2008), the same as the reports
// (lumbardx/report/overlay.py CLASS_COLOURS / EXTRA_ORDER), distinct for the common colour-vision
// deficiencies.

export const CLASS_COLOURS = {
  normal: "#009E73",            // bluish green
  herniation: "#D55E00",        // vermillion
  spondylolisthesis: "#CC79A7", // reddish purple
};
const EXTRA = ["#56B4E9", "#F0E442", "#E69F00", "#0072B2"]; // sky blue, yellow, orange, blue

/** Colour of class `label`; further classes take the next free extra colour by their index. */
export function classColour(label, classes = []) {
  if (CLASS_COLOURS[label]) return CLASS_COLOURS[label];
  const extras = classes.filter((c) => !CLASS_COLOURS[c]);
  const i = Math.max(0, extras.indexOf(label));
  return EXTRA[i % EXTRA.length];
}

/** Words a reader expects for a class name. */
export function className(label) {
  const names = { normal: "Normal", herniation: "Herniation", spondylolisthesis: "Spondylolisthesis" };
  return names[label] || label;
}
