from django.urls import path
from oauth2_provider import views as dot_views

from mailadmin.oauth import endpoints, views
from mailadmin.portal import views as portal_views

app_name = "oauth"

urlpatterns = [
    # The protocol endpoints. The consent page belongs to the owner portal.
    path("authorize/", portal_views.authorize, name="authorize"),
    path("token/", endpoints.TokenView.as_view(), name="token"),
    path("revoke/", dot_views.RevokeTokenView.as_view(), name="revoke"),
    path("introspect/", views.introspect, name="introspect"),
    # Staff pages.
    path("applications/", views.application_list, name="application_list"),
    path("applications/new/", views.application_create, name="application_create"),
    path("applications/<int:pk>/", views.application_detail, name="application_detail"),
    path("applications/<int:pk>/rotate-secret/", views.application_rotate_secret, name="application_rotate_secret"),
    path("applications/<int:pk>/toggle/", views.application_toggle, name="application_toggle"),
    path("tokens/", views.token_list, name="token_list"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token_revoke"),
]
