from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from mailadmin.accounts.models import Domain
from mailadmin.staff.models import User


@login_required
def dashboard(request):
    domains = Domain.objects.visible_to(request.user)
    context = {
        "domain_count": domains.count(),
        "active_domain_count": domains.filter(is_active=True).count(),
        "staff_count": User.objects.filter(is_active=True).count() if request.user.is_superadmin else None,
    }
    return render(request, "staff/dashboard.html", context)
