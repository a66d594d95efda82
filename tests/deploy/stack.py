"""template.yaml, translated and deployed into moto's CloudFormation, for tests/deploy.rs.

    stack.py translate                 prints the CloudFormation that SAM's translator makes of it
    stack.py deploy NAME PARAMETERS    creates it as stack NAME in moto (at AWS_ENDPOINT_URL), with
                                       PARAMETERS (a JSON object), and prints what the test needs

The translator is `aws-sam-translator`, the one `sam` and CloudFormation's
AWS::Serverless-2016-10-31 transform run. `CodeUri: .` names a folder that `sam deploy` uploads to
S3 first; the translator is given a placeholder S3 location for it, and moto a placeholder zip:
moto keeps the function's configuration and never runs its code.

moto's CloudFormation skips resource types it does not implement. Those the template would create
are created here through moto's own APIs, with the properties the template gives: the ones other
resources refer to (the secrets) before the stack, with those references bound to what was
created, as CloudFormation would bind them; the rest after it. The answer lists them under
"skipped", and the stack must hold every other resource the template creates.
"""

import json
import logging
import os
import random
import string
import sys

import boto3
from moto.cloudformation.parsing import resource_class_from_type
from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

logging.getLogger("moto").setLevel(logging.ERROR)  # it names each type it skips; so do we
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLACEHOLDER_CODE_URI = "s3://export-relay-artifacts/bootstrap.zip"
PLACEHOLDER_CODE = {"ZipFile": "placeholder: tests/deploy.rs runs the real bootstrap itself"}


class NoManagedPolicies(ManagedPolicyLoader):
    """The template names no AWS managed policy by short name, so IAM is never asked."""

    def __init__(self):
        pass

    def load(self):
        return {}


def translate():
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(os.path.join(ROOT, "template.yaml")) as f:
        template = yaml_parse(f.read())
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = PLACEHOLDER_CODE_URI
    return transform(template, {}, NoManagedPolicies())


NO_VALUE = object()  # what Ref AWS::NoValue resolves to: the property or item is left out


class Stack:
    """Resolves the template's intrinsic functions as CloudFormation would for one stack."""

    def __init__(self, template, name, parameters, region, account):
        self.template = template
        self.name = name
        self.region = region
        self.account = account
        self.parameters = {}
        for key, spec in template["Parameters"].items():
            value = str(parameters.get(key, spec.get("Default", "")))
            self.parameters[key] = value
        unknown = set(parameters) - set(self.parameters)
        if unknown:
            raise SystemExit(f"unknown parameters: {sorted(unknown)}")
        self.physical = {}  # logical ID -> physical ID, for resources that exist
        self.attributes = {}  # (logical ID, attribute) -> value

    def pseudo(self, name):
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::StackName": self.name,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }.get(name)

    def condition(self, name):
        return self.truth(self.template["Conditions"][name])

    def creates(self, logical_id):
        condition = self.template["Resources"][logical_id].get("Condition")
        return condition is None or self.condition(condition)

    def truth(self, node):
        (function, args), = node.items()
        if function == "Fn::Equals":
            left, right = (self.value(a) for a in args)
            return str(left) == str(right)
        if function == "Fn::Not":
            return not self.truth(args[0])
        if function == "Fn::And":
            return all(self.truth(a) for a in args)
        if function == "Fn::Or":
            return any(self.truth(a) for a in args)
        if function == "Condition":
            return self.condition(args)
        raise NotImplementedError(function)

    def value(self, node, typed=False):
        """The value of `node`; with `typed`, Number parameters come back as numbers, as an API
        call wants them (CloudFormation converts them itself)."""
        if isinstance(node, list):
            values = [self.value(n, typed) for n in node]
            return [v for v in values if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        key = next(iter(node), "")
        if len(node) != 1 or not (key == "Ref" or key.startswith("Fn::")):
            values = {k: self.value(v, typed) for k, v in node.items()}
            return {k: v for k, v in values.items() if v is not NO_VALUE}
        (function, args), = node.items()
        if function == "Ref":
            if args == "AWS::NoValue":
                return NO_VALUE
            if args in self.parameters:
                value = self.parameters[args]
                if typed and self.template["Parameters"][args]["Type"] == "Number":
                    return float(value) if "." in value else int(value)
                return value
            if self.pseudo(args) is not None:
                return self.pseudo(args)
            return self.physical[args]
        if function == "Fn::GetAtt":
            return self.attributes[tuple(args)]
        if function == "Fn::If":
            name, yes, no = args
            return self.value(yes if self.condition(name) else no, typed)
        if function == "Fn::Sub":
            text, variables = (args, {}) if isinstance(args, str) else args
            variables = {k: self.value(v) for k, v in variables.items()}
            for token in sub_tokens(text):
                if token in variables:
                    value = variables[token]
                elif "." in token:
                    value = self.attributes[tuple(token.split(".", 1))]
                else:
                    value = self.value({"Ref": token})
                text = text.replace("${" + token + "}", str(value))
            return text
        if function == "Fn::Join":
            separator, items = args
            return separator.join(str(v) for v in self.value(items))
        raise NotImplementedError(function)



def sub_tokens(text):
    tokens, start = [], text.find("${")
    while start != -1:
        end = text.index("}", start)
        if not text.startswith("${!", start):
            tokens.append(text[start + 2 : end])
        start = text.find("${", end)
    return tokens


def references(node):
    """The logical IDs and pseudo parameters that `node` refers to."""
    found = set()
    if isinstance(node, list):
        for n in node:
            found |= references(n)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= {t.split(".")[0] for t in sub_tokens(text)}
                if not isinstance(value, str):
                    found -= set(value[1])
                    found |= references(value[1])
            else:
                found |= references(value)
    return found


def bind(node, logical_id, physical_id):
    """`node` with every reference to `logical_id` replaced by its physical ID."""
    if isinstance(node, list):
        return [bind(n, logical_id, physical_id) for n in node]
    if isinstance(node, dict):
        if node == {"Ref": logical_id}:
            return physical_id
        if "Fn::Sub" in node:
            text, variables = (node["Fn::Sub"], None) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
            text = text.replace("${" + logical_id + "}", physical_id)
            return {"Fn::Sub": text if variables is None else [text, bind(variables, logical_id, physical_id)]}
        return {k: bind(v, logical_id, physical_id) for k, v in node.items()}
    return node


def generated_name(stack, logical_id):
    suffix = "".join(random.choices(string.ascii_uppercase + string.digits, k=12))
    return f"{stack}-{logical_id}-{suffix}"


def create_skipped(stack, logical_id, resource_type, properties):
    """Creates one resource moto's CloudFormation skipped; returns what its Ref gives."""
    if resource_type == "AWS::SecretsManager::Secret":
        name = properties.pop("Name", None) or generated_name(stack.name, logical_id)
        return boto3.client("secretsmanager").create_secret(Name=name, **properties)["ARN"]
    if resource_type == "AWS::CloudWatch::Alarm":
        properties.setdefault("AlarmName", generated_name(stack.name, logical_id))
        boto3.client("cloudwatch").put_metric_alarm(**properties)
        return properties["AlarmName"]
    if resource_type == "AWS::Scheduler::Schedule":
        name = properties.pop("Name", None) or generated_name(stack.name, logical_id)
        boto3.client("scheduler").create_schedule(Name=name, **properties)
        return name
    raise NotImplementedError(f"moto skips {resource_type} ({logical_id}); teach stack.py to create it")


def attributes_of(logical_id, resource_type, physical_id):
    """The attributes (Fn::GetAtt) of a resource moto created, for the resources created after."""
    if resource_type == "AWS::SQS::Queue":
        arn = boto3.client("sqs").get_queue_attributes(QueueUrl=physical_id, AttributeNames=["QueueArn"])
        return {"QueueName": physical_id.rsplit("/", 1)[1], "Arn": arn["Attributes"]["QueueArn"]}
    if resource_type == "AWS::Lambda::Function":
        return {"Arn": boto3.client("lambda").get_function(FunctionName=physical_id)["Configuration"]["FunctionArn"]}
    if resource_type == "AWS::IAM::Role":
        return {"Arn": boto3.client("iam").get_role(RoleName=physical_id)["Role"]["Arn"]}
    return {}


def check_rules(stack):
    """CloudFormation refuses a stack whose Rules fail; moto ignores Rules."""
    for name, rule in stack.template.get("Rules", {}).items():
        for assertion in rule["Assertions"]:
            if not stack.truth(assertion["Assert"]):
                raise SystemExit(f"rule {name} fails: {assertion.get('AssertDescription')}")


def deploy(name, parameters):
    template = translate()
    function_id = next(k for k, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::Function")
    template["Resources"][function_id]["Properties"]["Code"] = PLACEHOLDER_CODE
    sts_account = boto3.client("sts").get_caller_identity()["Account"]
    stack = Stack(template, name, parameters, boto3.session.Session().region_name, sts_account)
    check_rules(stack)

    creates = [k for k in template["Resources"] if stack.creates(k)]
    skipped = [k for k in creates if resource_class_from_type(template["Resources"][k]["Type"]) is None]
    referenced = set().union(*(references(template["Resources"][k]) for k in creates if k not in skipped))
    before = [k for k in skipped if not references(template["Resources"][k]) & set(template["Resources"])]
    after = [k for k in skipped if k not in before]
    if referenced & set(after):
        raise SystemExit(f"moto skips {sorted(referenced & set(after))}, which other resources need")

    body = template
    for logical_id in before:
        resource = template["Resources"][logical_id]
        physical_id = create_skipped(stack, logical_id, resource["Type"], stack.value(resource["Properties"], typed=True))
        stack.physical[logical_id] = physical_id
        body = bind(body, logical_id, physical_id)

    cfn = boto3.client("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(body),
        Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    summaries = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    listed = {s["LogicalResourceId"]: s for s in summaries if s["LogicalResourceId"]}
    missing = sorted(set(creates) - set(listed))
    if missing != sorted(skipped):
        raise SystemExit(f"moto's stack lacks {missing}; expected it to skip exactly {sorted(skipped)}")

    for logical_id, summary in listed.items():
        stack.physical[logical_id] = summary["PhysicalResourceId"]
        for attribute, value in attributes_of(logical_id, summary["ResourceType"], summary["PhysicalResourceId"]).items():
            stack.attributes[(logical_id, attribute)] = value
    for logical_id in after:
        resource = template["Resources"][logical_id]
        stack.physical[logical_id] = create_skipped(stack, logical_id, resource["Type"], stack.value(resource["Properties"], typed=True))

    described = cfn.describe_stacks(StackName=name)["Stacks"][0]
    function_name = stack.physical[function_id]
    lam = boto3.client("lambda")
    configuration = lam.get_function_configuration(FunctionName=function_name)
    mappings = lam.list_event_source_mappings(FunctionName=function_name)["EventSourceMappings"]
    # moto would run the function itself, in Docker, for each message sent to the queue; the test
    # plays Lambda's poller instead, so moto's must stand aside.
    for mapping in mappings:
        lam.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
    return {
        "stack": name,
        "status": described["StackStatus"],
        "skipped": [
            {"logical_id": k, "type": template["Resources"][k]["Type"], "physical_id": stack.physical[k]}
            for k in skipped
        ],
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
        "function": {"name": function_name, "environment": configuration["Environment"]["Variables"]},
        "event_sources": [
            {
                "queue_arn": m["EventSourceArn"],
                "batch_size": m["BatchSize"],
                "function_response_types": m.get("FunctionResponseTypes", []),
            }
            for m in mappings
        ],
    }


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "translate":
        result = translate()
    elif command == "deploy" and len(sys.argv) == 4:
        result = deploy(sys.argv[2], json.loads(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
    json.dump(result, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
