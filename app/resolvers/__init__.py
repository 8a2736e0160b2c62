"""The root operations of the API, combined from one mixin per domain."""

import strawberry

from app.resolvers.evaluations import EvaluationMutations, EvaluationQueries
from app.resolvers.progress import ProgressSubscriptions
from app.resolvers.test_sets import TestSetMutations, TestSetQueries


@strawberry.type(description="Reading test sets and evaluations.")
class Query(TestSetQueries, EvaluationQueries):
    pass


@strawberry.type(description="Creating test sets and running evaluations.")
class Mutation(TestSetMutations, EvaluationMutations):
    pass


@strawberry.type(description="Following evaluations live.")
class Subscription(ProgressSubscriptions):
    pass
