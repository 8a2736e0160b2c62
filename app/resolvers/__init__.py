"""The root operations of the API, combined from one mixin per domain."""

import strawberry

from app.resolvers.api_keys import ApiKeyMutations, ApiKeyQueries
from app.resolvers.evaluations import EvaluationMutations, EvaluationQueries
from app.resolvers.progress import ProgressSubscriptions
from app.resolvers.test_sets import TestSetMutations, TestSetQueries


@strawberry.type(description="Reading test sets and evaluations.")
class Query(TestSetQueries, EvaluationQueries, ApiKeyQueries):
    pass


@strawberry.type(description="Creating test sets, running evaluations and"
                 " managing API keys.")
class Mutation(TestSetMutations, EvaluationMutations, ApiKeyMutations):
    pass


@strawberry.type(description="Following evaluations live.")
class Subscription(ProgressSubscriptions):
    pass
