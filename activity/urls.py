app_name = "activity"

# The insights pages and the CSV export mount here.
urlpatterns: list = []
