from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"
    verbose_name = "Delivery metrics"

    def ready(self) -> None:
        from activity.log import listener_add
        from delivery.tasks import event_recorded

        listener_add(event_recorded)
