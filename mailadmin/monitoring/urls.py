from django.urls import path

from mailadmin.monitoring.views import alerts, blocks, detectors, events, ips, mailboxes, overview

app_name = "monitoring"

urlpatterns = [
    path("", overview.overview, name="overview"),
    path("fragment/", overview.overview_fragment, name="overview_fragment"),
    path("charts/<slug:name>.json", overview.chart_json, name="chart_json"),
    path("charts/<slug:name>.csv", overview.chart_csv, name="chart_csv"),
    path("events/", events.event_search, name="events"),
    path("events/export.csv", events.event_export, name="events_export"),
    path("mailboxes/<str:username>/", mailboxes.mailbox_security, name="mailbox"),
    path("mailboxes/<str:username>/suspend/", mailboxes.mailbox_suspend, name="mailbox_suspend"),
    path("ip/<path:target>/block/", ips.ip_block, name="ip_block"),
    path("ip/<path:target>/", ips.ip_detail, name="ip"),
    path("alerts/", alerts.alert_list, name="alerts"),
    path("alerts/bulk/", alerts.alert_bulk, name="alert_bulk"),
    path("alerts/<int:pk>/", alerts.alert_detail, name="alert"),
    path("alerts/<int:pk>/timeline.json", alerts.alert_timeline_json, name="alert_timeline"),
    path("alerts/<int:pk>/action/", alerts.alert_action, name="alert_action"),
    path("blocks/", blocks.block_list, name="blocks"),
    path("blocks/new/", blocks.block_create, name="block_create"),
    path("blocks/<int:pk>/lift/", blocks.block_lift, name="block_lift"),
    path("allowlist/", blocks.allowlist, name="allowlist"),
    path("allowlist/new/", blocks.allowlist_create, name="allowlist_create"),
    path("allowlist/<int:pk>/edit/", blocks.allowlist_edit, name="allowlist_edit"),
    path("allowlist/<int:pk>/delete/", blocks.allowlist_delete, name="allowlist_delete"),
    path("detectors/", detectors.detector_list, name="detectors"),
    path("detectors/<slug:rule>/", detectors.detector_edit, name="detector_edit"),
    path("detectors/<slug:rule>/preview/", detectors.detector_preview, name="detector_preview"),
]
