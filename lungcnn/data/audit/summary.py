"""The audit report as the few lines `lungcnn-audit` prints."""

from __future__ import annotations

from typing import Any

from lungcnn.data.audit.shortcuts import SHORTCUT_TASKS


def format_summary(report: dict[str, Any]) -> str:
    classes = ", ".join(f"{k} {v}" for k, v in report["classes"].items())
    ex, near, grp = report["exact_duplicates"], report["near_duplicates"], report["groups"]
    lines = [
        f"lungcnn-audit: {report['n_images']} images in {report['data_dir']} ({classes}), {report['seconds']} s",
        f"exact duplicates: {ex['byte_identical_pairs']} byte-identical pairs, "
        f"{ex['pixel_identical_pairs']} pixel-identical pairs",
        f"near duplicates (dHash <= {report['settings']['threshold']} of 64 bits): {near['pairs']} more pairs, "
        f"{near['pairs_across_classes']} of all near/exact pairs across classes",
        f"series groups: {grp['n_groups']} (largest {grp['largest']} images, {grp['single_images']} single images; "
        f"{grp['series_links']} neighbouring-number links within {report['settings']['series_threshold']} bits)",
        f"groups mixing labels: {len(grp['mixed_label'])}"
        + "".join(f"\n  {g['group']}: {g['labels']}" for g in grp["mixed_label"][:10]),
    ]
    if report["unreadable"]:
        lines.append(f"unreadable images (left out): {len(report['unreadable'])}, e.g. {report['unreadable'][0]}")
    lines += _size_lines(report["image_sizes"])
    lines += _leakage_lines(report["leakage"])
    agree = report["agreement_with_existing"]
    if agree:
        lines.append(f"agreement with the existing {agree['file']}: adjusted Rand index {agree['adjusted_rand_index']:.3f} "
                     f"({agree['n_groups_existing']} groups there, {agree['mixed_label_existing']} mixing labels)")
    lines += _shortcut_lines(report["shortcuts"])
    return "\n".join(lines)


def _size_lines(sizes: dict[str, dict[str, int]]) -> list[str]:
    """Image sizes per class, and how many images have a size no other class has (a possible shortcut)."""
    listed = "; ".join(f"{c} " + ", ".join(f"{k} {v}" for k, v in s.items()) for c, s in sizes.items())
    owners: dict[str, set[str]] = {}
    for c, s in sizes.items():
        for k in s:
            owners.setdefault(k, set()).add(c)
    only = sum(v for c, s in sizes.items() for k, v in s.items() if owners[k] == {c}) if len(sizes) > 1 else 0
    return [f"image sizes: {listed}", f"  images whose size no other class has: {only}"]


def _leakage_lines(leak: dict[str, Any]) -> list[str]:
    titles = {"random": "random image-level split", "grouped_audit": "split grouped by audit groups",
              "grouped_existing": "split grouped by existing groups.csv"}
    lines = ["leakage: test images with a near-duplicate / same-group image in train (audit groups; existing groups)"]
    for name, r in leak.items():
        if "skipped" in r:
            lines.append(f"  {titles[name]:<38} skipped: {r['skipped']}")
            continue
        existing = f"; {r['same_existing_group_in_train']}" if "same_existing_group_in_train" in r else ""
        lines.append(f"  {titles[name]:<38} {r['near_duplicate_in_train']:>4} / {r['same_audit_group_in_train']}{existing}"
                     f" of {r['test_images']} test images")
    return lines


def _shortcut_lines(shortcuts: dict[str, dict[str, Any]]) -> list[str]:
    tasks = [t for t, _ in SHORTCUT_TASKS]
    lines = ["shortcut check, no anatomy (grouped CV; ROC-AUC for two classes, balanced accuracy for three):",
             f"  {'feature':<22}" + "".join(f"{t:>22}" for t in tasks)]
    for feature, scores in shortcuts.items():
        cells = [f"{s['value']:.3f}" if "value" in s else "n/a" for s in (scores[t] for t in tasks)]
        lines.append(f"  {feature:<22}" + "".join(f"{c:>22}" for c in cells))
    strong = [f"{f} ({t})" for f, scores in shortcuts.items() for t, s in scores.items()
              if s.get("metric") == "roc_auc" and s["value"] >= 0.8]
    if strong:
        lines.append(f"  warning: {', '.join(strong)} separate classes without anatomy (AUC >= 0.8): a model can shortcut")
    return lines
